//! The `baton` command line: parses arguments and hands each subcommand to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use baton::catalog::TableFormat;
use baton::cli::{self, SqlSource, SqlTarget};
use baton::client::OutputFormat;
use baton::config::DEFAULT_TARGET_PARTITIONS;

/// Baton: a push-based, streaming, distributed query scheduler for Apache DataFusion.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scheduler (gRPC API, executor streams and Flight results on one address).
    Scheduler {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: SocketAddr,
        /// TOML catalog of tables SQL can name.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Partitions per stage DataFusion plans with.
        #[arg(long, default_value_t = DEFAULT_TARGET_PARTITIONS)]
        partitions: usize,
    },
    /// Run an executor that connects to a scheduler.
    Executor {
        /// Scheduler address (host:port).
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// Address of this executor's Flight endpoint (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: SocketAddr,
        /// Tasks run at once.
        #[arg(long, default_value_t = 2)]
        slots: u32,
        /// Directory for spilled shuffle files.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// MiB of shuffle output kept in memory before spilling to disk.
        #[arg(long, default_value_t = 4096)]
        memory_mb: usize,
    },
    /// Run a scheduler and executors in one process.
    Standalone {
        /// Address of the scheduler.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: SocketAddr,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Run SQL: with -c, -f, or statements on standard input.
    Sql {
        /// Scheduler address; without it an embedded cluster on loopback runs the SQL.
        #[arg(long)]
        scheduler: Option<String>,
        /// SQL to run.
        #[arg(short = 'c', long = "command", conflicts_with = "file")]
        command: Option<String>,
        /// File of ;-separated statements to run in order.
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        /// How results are printed.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// Keep going after a failed statement in a file.
        #[arg(long)]
        continue_on_error: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Generate data sets.
    Datagen {
        #[command(subcommand)]
        data: Datagen,
    },
    /// Show the status of one query, or list all.
    Status {
        /// The query id; all queries when omitted.
        query_id: Option<String>,
        /// Scheduler address.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
    },
    /// Cancel a query.
    Cancel {
        /// The query id.
        query_id: String,
        /// Scheduler address.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
    },
}

#[derive(Debug, Args)]
struct ClusterArgs {
    /// TOML catalog; without it, TPC-H SF 0.1 generated into the cache on first use.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Executors of an embedded cluster.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Slots per executor of an embedded cluster.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Partitions per stage DataFusion plans with.
    #[arg(long, default_value_t = DEFAULT_TARGET_PARTITIONS)]
    partitions: usize,
}

#[derive(Debug, Subcommand)]
enum Datagen {
    /// TPC-H tables plus a catalog.toml.
    Tpch {
        /// Scale factor (1 = about 1 GB of text).
        #[arg(long, default_value_t = 0.1)]
        scale: f64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// File format.
        #[arg(long, value_enum, default_value_t = DataFormat::Parquet)]
        format: DataFormat,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DataFormat {
    Tbl,
    Parquet,
}

impl From<DataFormat> for TableFormat {
    fn from(f: DataFormat) -> Self {
        match f {
            DataFormat::Tbl => TableFormat::Tbl,
            DataFormat::Parquet => TableFormat::Parquet,
        }
    }
}

impl From<ClusterArgs> for cli::ClusterOptions {
    fn from(a: ClusterArgs) -> Self {
        cli::ClusterOptions {
            catalog: a.catalog,
            executors: a.executors,
            slots: a.slots,
            partitions: a.partitions,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Sql { .. }
            | Command::Status { .. }
            | Command::Cancel { .. }
            | Command::Datagen { .. }
    );
    cli::init_logging(if quiet { "warn" } else { "info" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Scheduler {
                bind,
                catalog,
                partitions,
            } => cli::run_scheduler(bind, catalog, partitions).await,
            Command::Executor {
                scheduler,
                bind,
                slots,
                work_dir,
                memory_mb,
            } => cli::run_executor(scheduler, bind, slots, work_dir, memory_mb << 20).await,
            Command::Standalone { bind, cluster } => {
                cli::run_standalone(bind, cluster.into()).await
            }
            Command::Sql {
                scheduler,
                command,
                file,
                format,
                continue_on_error,
                cluster,
            } => {
                let source = match (command, file) {
                    (Some(sql), _) => SqlSource::Command(sql),
                    (None, Some(path)) => SqlSource::File(path),
                    (None, None) => SqlSource::Stdin,
                };
                let target = match scheduler {
                    Some(address) => SqlTarget::Remote {
                        address,
                        catalog: cluster.catalog,
                    },
                    None => SqlTarget::Embedded(cluster.into()),
                };
                cli::run_sql(target, source, format, continue_on_error).await
            }
            Command::Datagen {
                data: Datagen::Tpch { scale, out, format },
            } => cli::run_datagen(scale, out, format.into()),
            Command::Status {
                query_id,
                scheduler,
            } => cli::run_status(&scheduler, query_id).await,
            Command::Cancel {
                query_id,
                scheduler,
            } => cli::run_cancel(&scheduler, &query_id).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
