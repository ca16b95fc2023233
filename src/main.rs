//! The `baton` command line: parses arguments (each component's configuration is its own
//! flag struct, flattened here) and hands each subcommand to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use baton::catalog::TableFormat;
use baton::cli::{self, CliError, SqlSource, SqlTarget};
use baton::client::OutputFormat;
use baton::client::bench::TpchBench;
use baton::client::bench::fairness::FairnessBench;
use baton::client::bench::joins::JoinsBench;
use baton::client::bench::scheduler::SchedulerBench;
use baton::client::bench::straggler::StragglerBench;
use baton::cluster::ClusterConfig;
use baton::executor::ExecutorConfig;
use baton::scheduler::SchedulerConfig;

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
        /// Serve Prometheus metrics and the JSON query API over HTTP on this address.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        #[command(flatten)]
        config: SchedulerConfig,
    },
    /// Run an executor that connects to a scheduler.
    Executor {
        /// Serve Prometheus metrics over HTTP on this address.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        #[command(flatten)]
        config: ExecutorConfig,
    },
    /// Run a scheduler and executors in one process.
    Standalone {
        /// Address of the scheduler.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: SocketAddr,
        /// Serve Prometheus metrics and the JSON query API over HTTP on this address.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Run SQL: with -c, -f, or in the interactive shell when neither is given.
    Sql {
        /// Scheduler address; without it an embedded cluster on loopback runs the SQL
        /// (with --catalog too, this client plans and submits the physical plan).
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
        /// Log in to --scheduler as this user (password from BATON_PASSWORD or a
        /// prompt); TLS with --tls-ca.
        #[arg(long, requires = "scheduler")]
        user: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Generate data sets.
    Datagen {
        #[command(subcommand)]
        data: Datagen,
    },
    /// Run benchmarks.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
    /// Show the status of one query, or list all.
    Status {
        /// The query id; all queries when omitted.
        query_id: Option<String>,
        /// Scheduler address.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// Print JSON (the same documents as the scheduler's /api/queries).
        #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
        format: StatusFormat,
        #[command(flatten)]
        login: LoginArgs,
    },
    /// Cancel a query.
    Cancel {
        /// The query id.
        query_id: String,
        /// Scheduler address.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        #[command(flatten)]
        login: LoginArgs,
    },
    /// Manage the users file.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Print a users file entry (append it to the file the scheduler's --users names);
    /// the password comes from BATON_PASSWORD or is typed twice.
    Add {
        /// The user name.
        name: String,
        /// The user administers the cluster: sees and cancels every query.
        #[arg(long)]
        admin: bool,
    },
}

/// Who a client logs in as, and over what.
#[derive(Debug, Args)]
struct LoginArgs {
    /// Log in as this user (password from BATON_PASSWORD or a prompt).
    #[arg(long)]
    user: Option<String>,
    /// Connect over TLS, trusting this PEM CA certificate.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
}

impl LoginArgs {
    fn login(&self) -> Result<baton::client::Login, CliError> {
        cli::login(self.user.as_deref(), self.tls_ca.as_deref())
    }
}

/// An in-process cluster: the scheduler's flags, and how many executors of how many
/// slots.
#[derive(Debug, Args)]
struct ClusterArgs {
    /// Executors of an embedded cluster.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Slots per executor of an embedded cluster.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Suspended tasks each executor may hold for cheap queries' tasks; default: as many
    /// as --slots, 0: no preemption.
    #[arg(long)]
    preempt_slots: Option<u32>,
    #[command(flatten)]
    scheduler: SchedulerConfig,
}

impl ClusterArgs {
    /// The cluster's configuration; it binds its scheduler to `bind`.
    fn into_config(self, bind: SocketAddr) -> ClusterConfig {
        let mut config = ClusterConfig {
            executors: self.executors,
            bind,
            scheduler: self.scheduler,
            ..ClusterConfig::default()
        };
        config.executor.slots = self.slots;
        config.executor.preempt_slots = self.preempt_slots;
        config
    }
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// The 22 TPC-H queries on embedded clusters (or a running one).
    Tpch(TpchBench),
    /// Short queries under a load of long ones, under each scheduling policy.
    Fairness {
        #[command(flatten)]
        bench: FairnessBench,
        /// Directory for fairness.json.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
    /// Selective star joins: single-node DataFusion and Baton, filters on and off.
    Joins(JoinsBench),
    /// TPC-H with one slow executor: split units, speculation and stealing on, off, and
    /// the fast executors alone.
    Straggler(StragglerBench),
    /// The scheduler alone: simulated executors that finish tasks at once.
    Scheduler {
        #[command(flatten)]
        bench: SchedulerBench,
        /// Directory for scheduler.json.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum Datagen {
    /// TPC-H tables plus a catalog.toml.
    Tpch {
        /// Scale factor (1 = about 1 GB of text).
        #[arg(long, default_value_t = 0.1)]
        scale: f64,
        /// Output directory, or an object store prefix (s3://bucket/prefix; the store's
        /// settings from AWS_* variables).
        #[arg(long)]
        out: PathBuf,
        /// File format.
        #[arg(long, value_enum, default_value_t = DataFormat::Parquet)]
        format: DataFormat,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StatusFormat {
    Table,
    Json,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serves = matches!(
        cli.command,
        Command::Scheduler { .. } | Command::Executor { .. } | Command::Standalone { .. }
    );
    cli::init_logging(if serves { "info" } else { "warn" });
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
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one subcommand.
async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Scheduler {
            bind,
            metrics,
            config,
        } => cli::run_scheduler(bind, config, metrics).await,
        Command::Executor { metrics, config } => cli::run_executor(config, metrics).await,
        Command::Standalone {
            bind,
            metrics,
            cluster,
        } => cli::run_standalone(cluster.into_config(bind), metrics).await,
        Command::Sql {
            scheduler,
            command,
            file,
            format,
            continue_on_error,
            user,
            cluster,
        } => {
            let source = match (command, file) {
                (Some(sql), _) => SqlSource::Command(sql),
                (None, Some(path)) => SqlSource::File(path),
                (None, None) => SqlSource::Interactive,
            };
            let target = match scheduler {
                Some(address) => SqlTarget::Remote {
                    login: Box::new(cli::login(
                        user.as_deref(),
                        cluster.scheduler.cluster.tls.tls_ca.as_deref(),
                    )?),
                    address,
                    catalog: cluster.scheduler.catalog,
                },
                None => SqlTarget::Embedded(Box::new(cluster.into_config(loopback()))),
            };
            cli::run_sql(target, source, format, continue_on_error).await
        }
        Command::Bench { bench } => match bench {
            Bench::Tpch(bench) => cli::run_tpch_bench(bench).await,
            Bench::Fairness { bench, out } => cli::run_fairness_bench(bench, out).await,
            Bench::Scheduler { bench, out } => cli::run_scheduler_bench(bench, out).await,
            Bench::Joins(bench) => cli::run_joins_bench(bench).await,
            Bench::Straggler(bench) => cli::run_straggler_bench(bench).await,
        },
        Command::Datagen {
            data: Datagen::Tpch { scale, out, format },
        } => cli::run_datagen(scale, out, format.into()).await,
        Command::Status {
            query_id,
            scheduler,
            format,
            login,
        } => {
            let json = matches!(format, StatusFormat::Json);
            cli::run_status(&scheduler, &login.login()?, query_id, json).await
        }
        Command::Cancel {
            query_id,
            scheduler,
            login,
        } => cli::run_cancel(&scheduler, &login.login()?, &query_id).await,
        Command::User {
            command: UserCommand::Add { name, admin },
        } => cli::run_user_add(&name, admin),
    }
}

/// Loopback, any free port: an embedded cluster's scheduler address.
fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
