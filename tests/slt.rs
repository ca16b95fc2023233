//! DataFusion's own sqllogictest suite through a Baton cluster.
//!
//! The `.slt` files that ship with the `datafusion-sqllogictest` crate of the DataFusion
//! version Baton uses run twice with the `sqllogictest` runner and DataFusion's result
//! normalisation: once on single-node DataFusion (the reference) and once on a Baton
//! cluster (a scheduler and three executors over gRPC and Flight on 127.0.0.1, every
//! stage cut into four tasks), one session per file, DDL allowed under the files' copy.
//! A record counts where the reference passes it; `EXPLAIN` records print plan shapes,
//! which a distributed plan does not share, and are reported apart.
//!
//! ```text
//! cargo test --test slt                  # the files CI runs (see README)
//! cargo test --test slt -- --all         # every file
//! cargo test --test slt -- joins array/  # the files whose path contains a pattern
//! ```
//!
//! It prints, per file, its records, how many passed on Baton and on single-node
//! DataFusion, and the difference, then every difference with its cause. It fails when a
//! record the reference passes fails on Baton and `tests/slt/known_differences.txt` does
//! not list it with a reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton::client::{BatonClient, ClientError};
use baton::cluster::{ClusterConfig, LocalCluster};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_sqllogictest::{
    DFColumnType, DFOutput, DFSqlLogicTestError, DataFusion, convert_batches,
    convert_schema_to_types, df_value_validator, setup_scratch_dir, value_normalizer,
};
use sqllogictest::{AsyncDB, Condition, DBOutput, Record, Runner, strict_column_validator};

/// The label DataFusion's harness gives its runner (`skipif`/`onlyif` name it).
const LABEL: &str = "Datafusion";

/// A file that runs longer than this on either engine stops; its remaining records fail.
const FILE_TIMEOUT: Duration = Duration::from_secs(180);

/// The files CI runs: the breadth of DataFusion's SQL (see the README for why not all).
const CI_FILES: &[&str] = &[
    "aggregate.slt",
    "array/array_has.slt",
    "case.slt",
    "cast.slt",
    "coalesce.slt",
    "create_external_table.slt",
    "cte.slt",
    "ddl.slt",
    "decimal.slt",
    "distinct_on.slt",
    "expr.slt",
    "group_by.slt",
    "information_schema.slt",
    "insert.slt",
    "join_only.slt",
    "joins.slt",
    "limit.slt",
    "math.slt",
    "order.slt",
    "predicates.slt",
    "select.slt",
    "set_variable.slt",
    "string/string.slt",
    "subquery.slt",
    "datetime/timestamps.slt",
    "union.slt",
    "unnest.slt",
    "window.slt",
];

/// Why a record of the reference passes and fails on Baton, by "file:line".
const KNOWN_DIFFERENCES: &str = include_str!("slt/known_differences.txt");

/// The error a statement failed with on the cluster, shown as DataFusion's harness shows
/// its own ("DataFusion error: …") so the files' expected-error patterns apply.
#[derive(Debug, thiserror::Error)]
#[error("DataFusion error: {0}")]
struct ClusterError(String);

/// A sqllogictest engine over one Baton client connection (one session).
struct BatonDb {
    client: BatonClient,
}

#[async_trait]
impl AsyncDB for BatonDb {
    type Error = ClusterError;
    type ColumnType = DFColumnType;

    async fn run(&mut self, sql: &str) -> Result<DFOutput, ClusterError> {
        let result = self
            .client
            .sql(sql)
            .await
            .map_err(|e| ClusterError(cause(&e)))?;
        let types = convert_schema_to_types(result.schema.fields());
        let rows = convert_batches(&result.schema, result.batches, false)
            .map_err(|e| ClusterError(e.to_string()))?;
        Ok(if rows.is_empty() && types.is_empty() {
            DBOutput::StatementComplete(0)
        } else {
            DBOutput::Rows { types, rows }
        })
    }

    fn engine_name(&self) -> &str {
        "Baton"
    }

    /// Nothing to close: the session ends with the scheduler's idle timeout.
    async fn shutdown(&mut self) {}

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// DataFusion's error text inside the cluster's framing: "query ID failed: " from the
/// scheduler, "stage 2 task 0: " for a task's failure.
fn cause(error: &ClientError) -> String {
    let text = error.to_string();
    let mut rest = text.as_str();
    if let Some(after) = rest.strip_prefix("query ")
        && let Some((id, tail)) = after.split_once(" failed: ")
        && id.chars().all(|c| c.is_ascii_hexdigit())
    {
        rest = tail;
    }
    if let Some(after) = rest.strip_prefix("stage ")
        && let Some((task, tail)) = after.split_once(": ")
        && task.split(" task ").all(|n| n.parse::<u32>().is_ok())
    {
        rest = tail;
    }
    if let Some((_, last)) = rest.split_once(" times, last with: ") {
        rest = last;
    }
    rest.to_string()
}

/// One record's outcome.
#[derive(Debug, Clone)]
enum Outcome {
    Passed,
    Failed(String),
}

/// A record the runner executes: a statement or a query that applies to DataFusion.
struct Counted {
    line: u32,
    plan_shape: bool,
}

/// Statements and queries of `records` that apply to DataFusion (not `skipif`'d), by
/// index into `records`.
fn counted(records: &[Record<DFColumnType>]) -> BTreeMap<usize, Counted> {
    let applies = |conditions: &[Condition]| {
        conditions.iter().all(|c| match c {
            Condition::OnlyIf { label } => label == LABEL,
            Condition::SkipIf { label } => label != LABEL,
        })
    };
    records
        .iter()
        .enumerate()
        .filter_map(|(i, record)| match record {
            Record::Statement {
                loc,
                conditions,
                sql,
                ..
            }
            | Record::Query {
                loc,
                conditions,
                sql,
                ..
            } if applies(conditions) => Some((
                i,
                Counted {
                    line: loc.line(),
                    plan_shape: sql.trim_start().to_ascii_lowercase().starts_with("explain"),
                },
            )),
            _ => None,
        })
        .collect()
}

/// Runs `records` in `runner` until a `halt` or `deadline`; the outcome of every counted
/// record (records after a timeout fail with it).
async fn run_records<D, M>(
    runner: &mut Runner<D, M>,
    records: &[Record<DFColumnType>],
    counted: &BTreeMap<usize, Counted>,
    deadline: Instant,
) -> BTreeMap<usize, Outcome>
where
    D: AsyncDB<ColumnType = DFColumnType>,
    M: sqllogictest::MakeConnection<Conn = D>,
{
    runner.add_label(LABEL);
    runner.with_column_validator(strict_column_validator);
    runner.with_normalizer(value_normalizer);
    runner.with_validator(df_value_validator);
    let mut outcomes = BTreeMap::new();
    let mut timed_out = false;
    for (i, record) in records.iter().enumerate() {
        if matches!(record, Record::Halt { .. }) {
            break;
        }
        let outcome = if timed_out {
            Outcome::Failed("the file timed out before this record".into())
        } else {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, runner.run_async(record.clone())).await {
                Ok(Ok(_)) => Outcome::Passed,
                Ok(Err(e)) => Outcome::Failed(e.to_string()),
                Err(_) => {
                    timed_out = true;
                    Outcome::Failed(format!("timed out (file limit {FILE_TIMEOUT:?})"))
                }
            }
        };
        if counted.contains_key(&i) {
            outcomes.insert(i, outcome);
        }
    }
    outcomes
}

/// The per-file result.
struct FileReport {
    file: String,
    records: usize,
    plan_shape: usize,
    baton: usize,
    reference: usize,
    /// Records the reference passes and Baton fails (plan-shape ones left out).
    differences: Vec<(u32, String)>,
    seconds: (f64, f64),
}

async fn run_file(root: &Path, relative: &Path, address: &str) -> FileReport {
    let path = root.join(relative);
    let file = relative.display().to_string();
    let records = match sqllogictest::parse_file::<DFColumnType>(&path) {
        Ok(records) => records,
        Err(e) => {
            return FileReport {
                file,
                records: 0,
                plan_shape: 0,
                baton: 0,
                reference: 0,
                differences: vec![(0, format!("unparsable: {e}"))],
                seconds: (0.0, 0.0),
            };
        }
    };
    let counted = counted(&records);

    let started = Instant::now();
    setup_scratch_dir(relative).expect("scratch dir");
    let reference = {
        let relative = relative.to_path_buf();
        let mut runner = Runner::new(move || {
            let relative = relative.clone();
            async move {
                let config = SessionConfig::new().with_target_partitions(4);
                Ok::<_, DFSqlLogicTestError>(DataFusion::new(
                    SessionContext::new_with_config(config),
                    relative,
                    indicatif::ProgressBar::hidden(),
                ))
            }
        });
        run_records(&mut runner, &records, &counted, started + FILE_TIMEOUT).await
    };
    let reference_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    setup_scratch_dir(relative).expect("scratch dir");
    let baton = {
        let address = address.to_string();
        let mut runner = Runner::new(move || {
            let address = address.clone();
            async move {
                let client = BatonClient::connect(&address)
                    .await
                    .map_err(|e| ClusterError(e.to_string()))?;
                Ok(BatonDb { client })
            }
        });
        run_records(&mut runner, &records, &counted, started + FILE_TIMEOUT).await
    };
    let baton_seconds = started.elapsed().as_secs_f64();

    let passed = |outcomes: &BTreeMap<usize, Outcome>, i: &usize| {
        matches!(outcomes.get(i), Some(Outcome::Passed))
    };
    let mut differences = Vec::new();
    for (i, record) in &counted {
        if record.plan_shape || !passed(&reference, i) || passed(&baton, i) {
            continue;
        }
        let why = match baton.get(i) {
            Some(Outcome::Failed(e)) => e.clone(),
            _ => "not run (after a halt)".into(),
        };
        differences.push((record.line, why));
    }
    let count = |outcomes: &BTreeMap<usize, Outcome>| {
        counted
            .iter()
            .filter(|(i, c)| !c.plan_shape && passed(outcomes, i))
            .count()
    };
    FileReport {
        file,
        records: counted.values().filter(|c| !c.plan_shape).count(),
        plan_shape: counted.values().filter(|c| c.plan_shape).count(),
        baton: count(&baton),
        reference: count(&reference),
        differences,
        seconds: (reference_seconds, baton_seconds),
    }
}

/// Baton's crate directory: where `cargo test` runs this from (a build shared by
/// checkouts at other paths keeps the path it was compiled in).
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The crate directory of `datafusion-sqllogictest`, from `cargo metadata`.
fn suite_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(manifest_dir())
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "cargo metadata failed");
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let manifest = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "datafusion-sqllogictest")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("datafusion-sqllogictest among the packages");
    Path::new(manifest).parent().unwrap().to_path_buf()
}

/// Copies `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every `.slt` file under `dir`, relative to `root`, sorted.
fn slt_files(root: &Path, dir: &Path, found: &mut BTreeSet<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            slt_files(root, &path, found);
        } else if path.extension().is_some_and(|e| e == "slt") {
            found.insert(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

/// "file:line" → reason, from [`KNOWN_DIFFERENCES`].
fn known_differences() -> BTreeMap<String, String> {
    KNOWN_DIFFERENCES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (at, why) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            assert!(
                !why.trim().is_empty(),
                "{at}: a known difference needs a reason"
            );
            (at.to_string(), why.trim().to_string())
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = args.iter().any(|a| a == "--all");
    let patterns: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();

    let suite = suite_dir();
    let work = tempfile::tempdir().unwrap();
    // The files read data and write scratch output relative to the working directory,
    // as in DataFusion's repository (datafusion/sqllogictest, with `../../testing` and
    // `../core/tests/data` beside it, which the crate does not ship: tables there read
    // nothing on either engine). A copy keeps the registry untouched.
    let here = work.path().join("datafusion").join("sqllogictest");
    copy_tree(&suite.join("test_files"), &here.join("test_files"));
    copy_tree(&suite.join("data"), &here.join("data"));
    std::env::set_current_dir(&here).unwrap();
    let root = here.join("test_files");

    let mut files = BTreeSet::new();
    slt_files(&root, &root, &mut files);
    // A file that moved in a newer DataFusion would otherwise drop out of CI unseen.
    let missing: Vec<&&str> = CI_FILES
        .iter()
        .filter(|name| !files.contains(Path::new(name)))
        .collect();
    assert!(missing.is_empty(), "CI files not in the suite: {missing:?}");
    let files: Vec<PathBuf> = files
        .into_iter()
        // Spark-dialect files need Spark's functions, which neither engine here has.
        .filter(|f| !f.starts_with("spark"))
        .filter(|f| {
            let name = f.to_string_lossy();
            if !patterns.is_empty() {
                patterns.iter().any(|p| name.contains(p.as_str()))
            } else {
                all || CI_FILES.contains(&name.as_ref())
            }
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let reports = runtime.block_on(async {
        let mut config = ClusterConfig {
            executors: 3,
            ..ClusterConfig::default()
        };
        config.executor.slots = 2;
        config.scheduler.target_partitions = Some(4);
        config.scheduler.partition_data_bytes = 0;
        config.scheduler.allow_ddl = true;
        config.scheduler.data_prefixes = vec![work.path().display().to_string()];
        let cluster = LocalCluster::start(config).await.expect("start cluster");
        let mut reports = Vec::new();
        for file in &files {
            let report = run_file(&root, file, cluster.scheduler_address()).await;
            eprintln!(
                "{:<48} {:>5} records, baton {:>5}, datafusion {:>5} ({:.1}s / {:.1}s)",
                report.file,
                report.records,
                report.baton,
                report.reference,
                report.seconds.1,
                report.seconds.0
            );
            reports.push(report);
        }
        drop(cluster);
        reports
    });
    std::env::set_current_dir(manifest_dir()).unwrap();

    let known = known_differences();
    println!(
        "\n{:<48} {:>8} {:>8} {:>10} {:>6} {:>6}",
        "file", "records", "baton", "datafusion", "diff", "plans"
    );
    let mut totals = (0, 0, 0, 0, 0);
    let mut unexpected = Vec::new();
    let mut explained = Vec::new();
    for report in &reports {
        println!(
            "{:<48} {:>8} {:>8} {:>10} {:>6} {:>6}",
            report.file,
            report.records,
            report.baton,
            report.reference,
            report.differences.len(),
            report.plan_shape
        );
        totals.0 += report.records;
        totals.1 += report.baton;
        totals.2 += report.reference;
        totals.3 += report.differences.len();
        totals.4 += report.plan_shape;
        for (line, why) in &report.differences {
            let at = format!("{}:{line}", report.file);
            let first = why.lines().take(6).collect::<Vec<_>>().join("\n    ");
            match known.get(&at) {
                Some(reason) => explained.push(format!("{at}  [{reason}]\n    {first}")),
                None => unexpected.push(format!("{at}\n    {first}")),
            }
        }
    }
    println!(
        "{:<48} {:>8} {:>8} {:>10} {:>6} {:>6}",
        "total", totals.0, totals.1, totals.2, totals.3, totals.4
    );
    if !explained.is_empty() {
        println!("\nknown differences:\n{}", explained.join("\n"));
    }
    // Listed differences of the files that ran which no longer differ.
    let ran: BTreeSet<&str> = reports.iter().map(|r| r.file.as_str()).collect();
    let differing: BTreeSet<String> = reports
        .iter()
        .flat_map(|r| {
            r.differences
                .iter()
                .map(|(line, _)| format!("{}:{line}", r.file))
        })
        .collect();
    let fixed: Vec<&String> = known
        .keys()
        .filter(|at| {
            at.rsplit_once(':')
                .is_some_and(|(file, _)| ran.contains(file))
        })
        .filter(|at| !differing.contains(*at))
        .collect();
    if !fixed.is_empty() {
        println!(
            "\nlisted in known_differences.txt but passing now (remove them):\n{}",
            fixed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    if !unexpected.is_empty() {
        println!(
            "\nrecords single-node DataFusion passes and Baton fails:\n{}",
            unexpected.join("\n")
        );
    }
    // The copy goes; the in-process cluster's runtime ends with the process rather than
    // under tasks that still hold its timers.
    drop(work);
    std::process::exit(i32::from(!unexpected.is_empty()));
}
