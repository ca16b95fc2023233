//! The work behind each `baton` subcommand, callable from tests as well as `main.rs`:
//! running the processes (`serve`), SQL from the command line or the shell (`sql`,
//! `shell`), query status and cancel (`status`), and benchmarks and data (`bench`).

mod bench;
mod login;
mod serve;
mod shell;
mod sql;
mod status;

use std::path::PathBuf;

pub use bench::{
    run_datagen, run_fairness_bench, run_joins_bench, run_scheduler_bench, run_straggler_bench,
    run_tpch_bench,
};
pub use login::{PASSWORD_VARIABLE, login, run_user_add};
pub use serve::{run_executor, run_scheduler, run_standalone};
pub use sql::{SqlSource, SqlTarget, run_sql, split_statements};
pub use status::{run_cancel, run_status};

use crate::catalog::{CatalogError, TableFormat};
use crate::client::ClientError;
use crate::client::bench::BenchError;
use crate::cluster::{ClusterConfig, ClusterError, LocalCluster};
use crate::datagen::{self, DatagenError};
use crate::executor::ExecutorError;
use crate::planner::PlannerError;
use crate::scheduler::SchedulerError;
use crate::telemetry::TelemetryError;

/// Scale factor of the TPC-H data an embedded cluster uses when no catalog is given.
pub const DEFAULT_SCALE: f64 = 0.1;

/// Errors a subcommand ends with; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Starting an embedded cluster failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Talking to the scheduler failed, or the query failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The scheduler failed.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The executor failed.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// Data generation failed.
    #[error(transparent)]
    Datagen(#[from] DatagenError),
    /// The catalog could not be loaded.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Planning on the client failed.
    #[error(transparent)]
    Planner(#[from] PlannerError),
    /// Reading input or binding failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A benchmark failed.
    #[error(transparent)]
    Bench(#[from] BenchError),
    /// The scheduler lost its etcd lease, so another may lead now.
    #[error("the scheduler lost its leadership (its etcd lease expired); it stops")]
    LostLeadership,
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// Results could not be printed.
    #[error("printing results: {0}")]
    Format(#[from] datafusion::arrow::error::ArrowError),
    /// A statement of a file failed.
    #[error("statement {index} failed: {cause}\n  statement: {statement}")]
    Statement {
        /// 1-based position in the file.
        index: usize,
        /// The statement, shortened.
        statement: String,
        /// Why it failed.
        cause: Box<CliError>,
    },
    /// The interactive shell's terminal failed.
    #[error("shell: {0}")]
    Shell(String),
    /// Authentication or TLS settings are unusable.
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    /// Some statements failed (with --continue-on-error).
    #[error("{0} statement(s) failed")]
    Failures(usize),
}

/// Sets up `tracing` output on stderr; `RUST_LOG` overrides `default`.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The catalog to use: the given one, or TPC-H SF 0.1 generated into the cache.
pub fn catalog_or_default(catalog: Option<PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(path) = catalog {
        return Ok(path);
    }
    let cache = datagen::cache_dir();
    let dir_name = format!("tpch-sf{DEFAULT_SCALE}-parquet");
    if !cache.join(&dir_name).join("catalog.toml").exists() {
        eprintln!(
            "generating TPC-H SF {DEFAULT_SCALE} into {} (first run only)…",
            cache.display()
        );
    }
    Ok(datagen::cached_tpch(
        &cache,
        DEFAULT_SCALE,
        TableFormat::Parquet,
    )?)
}

/// Starts an in-process cluster on `config` (TPC-H SF 0.1 when it names no catalog).
async fn start_cluster(mut config: ClusterConfig) -> Result<LocalCluster, CliError> {
    config.scheduler.catalog = Some(catalog_or_default(config.scheduler.catalog.take())?);
    config.executors = config.executors.max(1);
    Ok(LocalCluster::start(config).await?)
}

/// `statement` on one line, cut at 120 characters.
fn shorten(statement: &str) -> String {
    let one_line = statement.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 120 {
        format!("{}…", one_line.chars().take(120).collect::<String>())
    } else {
        one_line
    }
}
