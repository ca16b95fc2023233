//! How an executor is set up: one struct, whose fields are the `baton executor` flags,
//! each with its default written once, here.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::config::{parse_mib, parse_seconds};
use crate::security::ClusterFlags;

/// How an executor is set up.
#[derive(Debug, Clone, Args)]
pub struct ExecutorConfig {
    /// Scheduler address (host:port), or several separated by commas (a scheduler and
    /// its standbys): the executor registers with whichever answers.
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub scheduler: String,
    /// Address of this executor's Flight endpoint (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: SocketAddr,
    /// Host name or address (optionally with a port) other executors and the scheduler
    /// dial to reach the Flight endpoint; needed when --bind is 0.0.0.0 or [::];
    /// default: the bound address.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub advertise: Option<String>,
    /// Tasks run at once; default: the host's cores.
    #[arg(long, default_value_t = crate::config::host_cores() as u32)]
    pub slots: u32,
    /// Suspended tasks it may hold beyond its slots (each keeps its memory): the
    /// scheduler suspends a running task to run a far cheaper query's task in its slot;
    /// default: as many as --slots, 0: never.
    #[arg(long)]
    pub preempt_slots: Option<u32>,
    /// The executor's name in the scheduler's status, logs and metrics, unique in the
    /// cluster; default: a random one.
    #[arg(long = "id", value_name = "NAME")]
    pub executor_id: Option<String>,
    /// Directory for spilled shuffle files; default: the system's temporary directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// MiB of memory for its tasks' operators and its shuffle output together: sorts,
    /// aggregations and joins spill to the work dir when it is short, shuffle output goes
    /// to files, and a task that cannot fit fails with "resources exhausted"; default:
    /// half of this host's memory.
    #[arg(long = "memory-limit", value_name = "MIB", value_parser = parse_mib)]
    pub memory_limit: Option<u64>,
    /// Seconds a shuffle fetch may wait for its peer (to answer, or for its next
    /// message) before the task fails it and the scheduler computes that output again.
    #[arg(long = "fetch-timeout", value_name = "SECONDS", value_parser = parse_seconds, default_value = "60")]
    pub fetch_timeout: std::time::Duration,
    /// Percent of --memory-limit that shuffle output may hold in memory; past it,
    /// shuffle partitions go to files and the rest stays for the tasks' operators.
    #[arg(long, value_name = "PERCENT", default_value = "50", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub shuffle_memory_percent: u8,
    /// Seconds an executor that got SIGTERM waits for its tasks to finish and for
    /// nothing to need its shuffle output before it stops anyway.
    #[arg(long = "drain-timeout", value_name = "SECONDS", value_parser = parse_seconds, default_value = "60")]
    pub drain_timeout: std::time::Duration,
    /// Seconds an executor that lost its scheduler stream keeps its shuffle output and
    /// tries to register again (with the restarted scheduler, or a standby), reporting
    /// what it holds; past them it starts over empty.
    #[arg(long = "reconnect-grace", value_name = "SECONDS", value_parser = parse_seconds, default_value = "60")]
    pub reconnect_grace: std::time::Duration,
    /// The cluster secret and TLS.
    #[command(flatten)]
    pub cluster: ClusterFlags,
}

impl Default for ExecutorConfig {
    /// The defaults of the flags.
    fn default() -> Self {
        crate::config::defaults_of::<Self>()
    }
}

impl ExecutorConfig {
    /// An executor of `slots` slots for the scheduler at `scheduler` (a leading
    /// `http://` is dropped), on loopback, that may hold as many suspended tasks again;
    /// it spills to `work_dir`, the system's temporary directory when None.
    pub fn local(scheduler: &str, slots: u32, work_dir: Option<PathBuf>) -> Self {
        Self {
            scheduler: scheduler.to_string(),
            slots,
            work_dir,
            ..Self::default()
        }
    }

    /// Suspended tasks it may hold beyond its slots.
    pub fn preempt_slots(&self) -> u32 {
        self.preempt_slots.unwrap_or(self.slots)
    }

    /// The schedulers' host:port, each without a leading `http://`.
    pub fn scheduler_addresses(&self) -> Vec<String> {
        self.scheduler
            .split(',')
            .map(|a| a.trim().trim_start_matches("http://").to_string())
            .filter(|a| !a.is_empty())
            .collect()
    }

    /// Bytes of memory its tasks and shuffle output may use together.
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit.unwrap_or_else(|| host_memory() / 2)
    }

    /// The directory its spill files go under.
    pub fn work_dir(&self) -> PathBuf {
        self.work_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("baton-executor"))
    }
}

/// Bytes of memory this host has (Linux: `MemTotal` of `/proc/meminfo`); 8 GiB where it
/// cannot be read.
pub fn host_memory() -> u64 {
    const FALLBACK: u64 = 8 << 30;
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return FALLBACK;
    };
    info.lines()
        .find_map(|line| {
            let kib = line.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
            kib.trim().parse::<u64>().ok()
        })
        .map_or(FALLBACK, |kib| kib * 1024)
}
