//! The `baton` command line: parses arguments and hands each subcommand to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use baton::catalog::TableFormat;
use baton::cli::{self, SqlSource, SqlTarget};
use baton::client::OutputFormat;
use baton::client::bench::TpchBench;
use baton::client::bench::fairness::FairnessBench;
use baton::client::bench::scheduler::SchedulerBench;
use baton::config::DEFAULT_TARGET_PARTITIONS;
use baton::executor::ExecutorConfig;
use baton::scheduler::{
    DEFAULT_AGING_HALF_LIFE, DEFAULT_INLINE_RESULT_BYTES, DEFAULT_PARTITION_DATA_BYTES,
    DEFAULT_PREEMPT_COST_RATIO, DEFAULT_RESULT_TTL, PolicyKind, SchedulerConfig,
};
use baton::thread_priority::{self, Realtime};

/// jemalloc, purging on background threads. glibc's malloc grows each thread arena's heap
/// a few pages at a time with `mprotect`, under the process's memory-map lock; low-priority
/// task and planning threads held or queued for that lock while off the CPU, and stalled
/// the normal-priority threads of urgent work for milliseconds (see docs/design.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Baton: a push-based, streaming, distributed query scheduler for Apache DataFusion.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Keep every thread at normal OS priority. By default a scheduler, an executor or an
    /// embedded cluster runs the threads interactive work waits on (the async runtime,
    /// urgent task threads, small queries' planning) at the lowest real-time priorities
    /// where the OS allows it (root or CAP_SYS_NICE).
    #[arg(long, global = true)]
    no_realtime: bool,
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
        /// Partitions per stage DataFusion plans with, at most.
        #[arg(long, default_value_t = DEFAULT_TARGET_PARTITIONS)]
        partitions: usize,
        /// MiB of table data (its files, whole) that earn a query one partition, up to
        /// --partitions; 0: every query gets --partitions.
        #[arg(long, default_value_t = DEFAULT_PARTITION_DATA_BYTES >> 20)]
        partition_data_mib: u64,
        /// How tasks of concurrent queries are ordered: priority, fair or fifo.
        #[arg(long, default_value_t = PolicyKind::default())]
        policy: PolicyKind,
        /// Seconds of waiting that halve a query's cost against newer queries (priority
        /// policy); 0: no aging.
        #[arg(long, default_value_t = DEFAULT_AGING_HALF_LIFE)]
        aging_half_life: f64,
        /// Seconds an unfetched result is kept before its partitions are freed.
        #[arg(long, default_value_t = DEFAULT_RESULT_TTL.as_secs())]
        result_ttl: u64,
        /// A task preempts (priority policy) only for a query with under 1/this of the
        /// remaining work of the task it displaces.
        #[arg(long, default_value_t = DEFAULT_PREEMPT_COST_RATIO)]
        preempt_cost_ratio: f64,
        /// KiB of Arrow IPC each task of a query's final stage sends back with its
        /// status, so the scheduler serves small results itself; 0: results stay on the
        /// executors until fetched.
        #[arg(long, default_value_t = DEFAULT_INLINE_RESULT_BYTES >> 10)]
        inline_result_kib: u64,
        /// Serve Prometheus metrics and the JSON query API over HTTP on this address.
        #[arg(long)]
        metrics: Option<SocketAddr>,
    },
    /// Run an executor that connects to a scheduler.
    Executor {
        /// Scheduler address (host:port).
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// Address of this executor's Flight endpoint (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: SocketAddr,
        /// Address of its second Flight endpoint, which serves background tasks' shuffle
        /// reads on low-priority threads; default: --bind's host, any free port.
        #[arg(long)]
        background_bind: Option<SocketAddr>,
        /// Tasks run at once.
        #[arg(long, default_value_t = 2)]
        slots: u32,
        /// Tasks taken beyond the slots when more urgent than running ones, which then
        /// wait suspended (holding their memory); default: as many as --slots, 0: never.
        #[arg(long)]
        preempt_slots: Option<u32>,
        /// The executor's name in the scheduler's status, logs and metrics, unique in
        /// the cluster; default: a random one.
        #[arg(long)]
        id: Option<String>,
        /// Directory for spilled shuffle files.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// MiB of shuffle output kept in memory before spilling to disk.
        #[arg(long, default_value_t = 4096)]
        memory_mb: usize,
        /// Serve Prometheus metrics over HTTP on this address.
        #[arg(long)]
        metrics: Option<SocketAddr>,
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
    /// Partitions per stage DataFusion plans with, at most.
    #[arg(long, default_value_t = DEFAULT_TARGET_PARTITIONS)]
    partitions: usize,
    /// MiB of table data (its files, whole) that earn a query one partition, up to
    /// --partitions; 0: every query gets --partitions.
    #[arg(long, default_value_t = DEFAULT_PARTITION_DATA_BYTES >> 20)]
    partition_data_mib: u64,
    /// How tasks of concurrent queries are ordered: priority, fair or fifo.
    #[arg(long, default_value_t = PolicyKind::default())]
    policy: PolicyKind,
    /// Seconds of waiting that halve a query's cost against newer queries (priority
    /// policy); 0: no aging.
    #[arg(long, default_value_t = DEFAULT_AGING_HALF_LIFE)]
    aging_half_life: f64,
    /// Tasks each executor takes beyond its slots when more urgent than running ones,
    /// which then wait suspended; default: as many as --slots, 0: never.
    #[arg(long)]
    preempt_slots: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// The 22 TPC-H queries on embedded clusters (or a running one).
    Tpch {
        /// Scale factor; data is generated and cached on first use.
        #[arg(long, default_value_t = 0.1)]
        scale: f64,
        /// Executor counts to run with, a fresh embedded cluster each (e.g. 1,2,4).
        #[arg(long, value_delimiter = ',', default_value = "2")]
        executors: Vec<usize>,
        /// Slots per executor.
        #[arg(long, default_value_t = 1)]
        slots: u32,
        /// Partitions per stage (and of the single-node baseline).
        #[arg(long, default_value_t = 2)]
        partitions: usize,
        /// Runs of each query; the fastest counts.
        #[arg(long, default_value_t = 1)]
        iterations: usize,
        /// Submit all queries at once.
        #[arg(long)]
        concurrent: bool,
        /// Use a running scheduler instead of embedded clusters.
        #[arg(long)]
        scheduler: Option<String>,
        /// Also run single-node DataFusion on the same data and print the ratios.
        #[arg(long)]
        baseline: bool,
        /// Only these queries (e.g. 1,5,22).
        #[arg(long, value_delimiter = ',')]
        queries: Vec<u32>,
        /// Directory for tpch.json and the SVG plots.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
    /// Short queries under a load of long ones, under each scheduling policy.
    Fairness {
        /// TPC-H scale factor of the data (generated and cached on first use).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Executors of each cluster.
        #[arg(long, default_value_t = 2)]
        executors: usize,
        /// Slots per executor.
        #[arg(long, default_value_t = 2)]
        slots: u32,
        /// Partitions per stage, at most.
        #[arg(long, default_value_t = DEFAULT_TARGET_PARTITIONS)]
        partitions: usize,
        /// MiB of table data (its files, whole) that earn a query one partition, up to
        /// --partitions; 0: every query gets --partitions.
        #[arg(long, default_value_t = DEFAULT_PARTITION_DATA_BYTES >> 20)]
        partition_data_mib: u64,
        /// Long background queries submitted at the start.
        #[arg(long, default_value_t = 8)]
        long: usize,
        /// Short queries submitted over time.
        #[arg(long, default_value_t = 20)]
        short: usize,
        /// Milliseconds between short queries.
        #[arg(long, default_value_t = 250)]
        interval_ms: u64,
        /// Policies to compare.
        #[arg(long, value_delimiter = ',', default_value = "fifo,fair,priority")]
        policies: Vec<PolicyKind>,
        /// Runs of the whole comparison (policies taking turns); the report gives each
        /// measure's median over the runs and how many runs met the slowdown goal.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Tasks each executor takes beyond its slots when urgent (priority preempts);
        /// default: as many as --slots, 0: no preemption.
        #[arg(long)]
        preempt_slots: Option<u32>,
        /// A task preempts (priority policy) only for a query with under 1/this of the
        /// remaining work of the task it displaces.
        #[arg(long, default_value_t = DEFAULT_PREEMPT_COST_RATIO)]
        preempt_cost_ratio: f64,
        /// Seconds of waiting that halve a query's cost against newer queries (priority
        /// policy); 0: no aging.
        #[arg(long, default_value_t = DEFAULT_AGING_HALF_LIFE)]
        aging_half_life: f64,
        /// Directory for fairness.json.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
    /// The scheduler alone: simulated executors that finish tasks at once.
    Scheduler {
        /// Queries submitted at once in the throughput phase.
        #[arg(long, default_value_t = 1000)]
        queries: usize,
        /// Map tasks per query in the throughput phase.
        #[arg(long, default_value_t = 100)]
        tasks: usize,
        /// Simulated executors.
        #[arg(long, default_value_t = 2)]
        executors: usize,
        /// Slots per simulated executor.
        #[arg(long, default_value_t = 16)]
        slots: u32,
        /// Queries run one at a time in the latency phase.
        #[arg(long, default_value_t = 200)]
        latency_queries: usize,
        /// Scheduling policy.
        #[arg(long, default_value_t = PolicyKind::default())]
        policy: PolicyKind,
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
        /// Output directory.
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

impl From<ClusterArgs> for cli::ClusterOptions {
    fn from(a: ClusterArgs) -> Self {
        cli::ClusterOptions {
            catalog: a.catalog,
            executors: a.executors,
            slots: a.slots,
            partitions: a.partitions,
            partition_data_bytes: mib_to_bytes(a.partition_data_mib),
            policy: a.policy,
            aging_half_life: a.aging_half_life,
            preempt_slots: a.preempt_slots,
        }
    }
}

/// Bytes in `mib` MiB; a value too large for bytes saturates (any table fits then).
fn mib_to_bytes(mib: u64) -> u64 {
    mib.saturating_mul(1 << 20)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Sql { .. }
            | Command::Status { .. }
            | Command::Cancel { .. }
            | Command::Datagen { .. }
            | Command::Bench { .. }
    );
    cli::init_logging(if quiet { "warn" } else { "info" });
    // Commands that run a scheduler or executors (or may embed them); not a client of a
    // running scheduler, whose runtime decodes results of any size.
    let serves = matches!(
        cli.command,
        Command::Scheduler { .. }
            | Command::Executor { .. }
            | Command::Standalone { .. }
            | Command::Sql {
                scheduler: None,
                ..
            }
            | Command::Bench { .. }
    );
    thread_priority::use_realtime_priorities(serves && !cli.no_realtime);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(|| thread_priority::raise_current_thread(Realtime::Service))
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
                partition_data_mib,
                policy,
                aging_half_life,
                result_ttl,
                preempt_cost_ratio,
                inline_result_kib,
                metrics,
            } => {
                let config = SchedulerConfig {
                    catalog,
                    target_partitions: partitions,
                    partition_data_bytes: mib_to_bytes(partition_data_mib),
                    policy,
                    aging_half_life,
                    result_ttl: std::time::Duration::from_secs(result_ttl),
                    preempt_cost_ratio,
                    inline_result_bytes: inline_result_kib.saturating_mul(1024),
                };
                cli::run_scheduler(bind, config, metrics).await
            }
            Command::Executor {
                scheduler,
                bind,
                background_bind,
                slots,
                preempt_slots,
                id,
                work_dir,
                memory_mb,
                metrics,
            } => {
                let mut config = ExecutorConfig::local(&scheduler, slots, work_dir);
                config.executor_id = id;
                config.bind = bind;
                config.background_bind = background_bind;
                config.memory_limit = memory_mb << 20;
                if let Some(preempt_slots) = preempt_slots {
                    config.preempt_slots = preempt_slots;
                }
                cli::run_executor(config, metrics).await
            }
            Command::Standalone {
                bind,
                metrics,
                cluster,
            } => cli::run_standalone(bind, cluster.into(), metrics).await,
            Command::Bench { bench } => match bench {
                Bench::Tpch {
                    scale,
                    executors,
                    slots,
                    partitions,
                    iterations,
                    concurrent,
                    scheduler,
                    baseline,
                    queries,
                    out,
                } => {
                    cli::run_tpch_bench(TpchBench {
                        scale,
                        executors,
                        slots,
                        partitions,
                        iterations: iterations.max(1),
                        concurrent,
                        scheduler,
                        baseline,
                        queries,
                        out: Some(out),
                    })
                    .await
                }
                Bench::Fairness {
                    scale,
                    executors,
                    slots,
                    partitions,
                    partition_data_mib,
                    long,
                    short,
                    interval_ms,
                    policies,
                    runs,
                    preempt_slots,
                    preempt_cost_ratio,
                    aging_half_life,
                    out,
                } => {
                    let bench = FairnessBench {
                        preempt_slots,
                        preempt_cost_ratio,
                        aging_half_life,
                        scale,
                        executors,
                        slots,
                        partitions,
                        partition_data_bytes: mib_to_bytes(partition_data_mib),
                        long_queries: long,
                        short_queries: short,
                        interval: std::time::Duration::from_millis(interval_ms),
                        policies,
                        runs,
                    };
                    cli::run_fairness_bench(bench, out).await
                }
                Bench::Scheduler {
                    queries,
                    tasks,
                    executors,
                    slots,
                    latency_queries,
                    policy,
                    out,
                } => {
                    let bench = SchedulerBench {
                        queries,
                        tasks,
                        executors,
                        slots,
                        latency_queries,
                        policy,
                    };
                    cli::run_scheduler_bench(bench, out).await
                }
            },
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
                    (None, None) => SqlSource::Interactive,
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
                format,
            } => cli::run_status(&scheduler, query_id, matches!(format, StatusFormat::Json)).await,
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
