//! How a scheduler is set up: one struct, whose fields are the `baton scheduler` flags
//! (and an embedded cluster's), each with its default written once, here.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::durable::StateLocation;
use super::policy::PolicyKind;
use crate::config::{Switch, parse_kib, parse_mib, parse_seconds};
use crate::security::{
    Authenticator, ClientCertificates, ClusterFlags, Dialer, SecurityError, Users,
};

/// How a scheduler is set up.
#[derive(Debug, Clone, Args)]
pub struct SchedulerConfig {
    /// TOML catalog of tables SQL can name.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Partitions (tasks per stage) a query is planned with, at most; default: four per
    /// task slot of the connected executors (the scheduler's cores while none is).
    #[arg(long = "partitions", value_name = "N")]
    pub target_partitions: Option<usize>,
    /// MiB of table data (its files, whole) that earn a query one partition, up to
    /// --partitions; 0: every query gets --partitions.
    #[arg(long = "partition-data-mib", value_name = "MIB", value_parser = parse_mib, default_value = "128")]
    pub partition_data_bytes: u64,
    /// MiB of file data per split unit: a stage whose tasks are its file scans' partitions
    /// runs one task per unit (byte ranges), so that fast executors take more of them;
    /// 0: scans keep the partitions the query was planned with.
    #[arg(long = "split-unit-mib", value_name = "MIB", value_parser = parse_mib, default_value = "64")]
    pub split_unit_bytes: u64,
    /// Speculation: a task running longer than --speculation-multiple times the median
    /// of its stage's finished tasks (and --speculation-min-seconds) gets a copy on an
    /// executor with a free slot while no queued task waits; the first to finish wins.
    #[arg(long = "speculation", value_name = "on|off", default_value = "on")]
    pub speculation: Switch,
    /// How many times its stage's median task time a task runs before it gets a copy.
    #[arg(long = "speculation-multiple", value_name = "X", default_value = "1.5")]
    pub speculation_multiple: f64,
    /// Seconds a task runs at least before it gets a copy.
    #[arg(long = "speculation-min-seconds", value_name = "SECONDS", value_parser = parse_seconds, default_value = "0.1")]
    pub speculation_min_runtime: Duration,
    /// An executor whose recent tasks took this many times their stages' medians (sums
    /// fading over seconds) gets no new task while a faster one is connected, then one
    /// at a time until it is back under half way; 0: never left out.
    #[arg(long = "slow-executor-factor", value_name = "X", default_value = "2")]
    pub slow_executor_factor: f64,
    /// Work stealing: a task suspended on a busy executor (preempted by a far cheaper
    /// query's) is copied to an executor with a free slot while no queued task waits.
    #[arg(long = "work-stealing", value_name = "on|off", default_value = "on")]
    pub work_stealing: Switch,
    /// Join filters across stages: a hash join's finished build side filters the scans
    /// of its probe side (which may wait for it where the estimates say that pays).
    #[arg(long = "dynamic-filters", value_name = "on|off", default_value = "on")]
    pub join_filters: Switch,
    /// How tasks of concurrent queries are ordered: priority (least remaining work
    /// first, with aging; cheap queries preempt), fair (round robin) or fifo.
    #[arg(long, default_value = "priority")]
    pub policy: PolicyKind,
    /// Seconds of waiting that halve a query's cost against newer queries (priority
    /// policy); 0: no aging.
    #[arg(long, default_value = "10")]
    pub aging_half_life: f64,
    /// Queries that run at once; more wait in state Queued and start in policy order as
    /// running ones end; default: four per task slot of the connected executors, at
    /// least 16.
    #[arg(long, value_name = "N")]
    pub max_running_queries: Option<usize>,
    /// MiB a single request to the scheduler may have (a submitted SQL text or plan, a
    /// Flight call, a message on an executor stream); larger ones are refused.
    #[arg(long = "max-request-mib", value_name = "MIB", value_parser = parse_mib, default_value = "64")]
    pub max_request_bytes: u64,
    /// Seconds an unfetched result is kept before its partitions are freed.
    #[arg(long = "result-ttl", value_name = "SECONDS", value_parser = parse_seconds, default_value = "600")]
    pub result_ttl: Duration,
    /// Run DDL, DML and COPY for clients (by default only queries run), with their
    /// file locations under a --data-prefix.
    #[arg(long)]
    pub allow_ddl: bool,
    /// A directory or URL prefix (repeatable) that DDL and COPY may point into, and
    /// that client-planned queries may read, with --allow-ddl.
    #[arg(long = "data-prefix", value_name = "PATH_OR_URL")]
    pub data_prefixes: Vec<String>,
    /// Seconds a scheduler that got SIGTERM waits for its queries to end and their
    /// results to be fetched before it stops anyway.
    #[arg(long = "drain-timeout", value_name = "SECONDS", value_parser = parse_seconds, default_value = "60")]
    pub drain_timeout: Duration,
    /// A task preempts (priority policy) only for a query with under 1/this of the
    /// remaining work of the task it suspends.
    #[arg(long, default_value = "10")]
    pub preempt_cost_ratio: f64,
    /// TOML file of the users who may log in (argon2 password hashes, roles; see `baton
    /// user add`). Without it and a cluster secret, authentication is off and the
    /// scheduler listens only on loopback.
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// The cluster secret (executors without it cannot register, fetch shuffle data or
    /// read results) and TLS.
    #[command(flatten)]
    pub cluster: ClusterFlags,
    /// KiB of Arrow IPC each task of a query's final stage sends back with its status,
    /// so the scheduler serves small results itself; 0: results stay on the executors
    /// until fetched.
    #[arg(long = "inline-result-kib", value_name = "KIB", value_parser = parse_kib, default_value = "1024")]
    pub inline_result_bytes: u64,
    /// MiB of such results the scheduler holds at most: past it, final tasks keep their
    /// output on the executors until fetched.
    #[arg(long = "max-held-results-mib", value_name = "MIB", value_parser = parse_mib, default_value = "256")]
    pub held_results_cap: u64,
    /// Where the scheduler keeps its queries, so that a restart resumes them: embedded
    /// (a file in --state-dir), etcd://HOST:PORT[,HOST:PORT]/PREFIX (shared with standby
    /// schedulers: one leads, the others take over when its lease expires) or memory
    /// (a restart loses them); default: embedded for `baton scheduler`, memory for an
    /// embedded cluster.
    #[arg(long = "state", value_name = "embedded|memory|etcd://…")]
    pub state: Option<StateLocation>,
    /// Seconds of the etcd lease behind the leadership: a standby takes over this long
    /// (at most) after the active scheduler stopped renewing it.
    #[arg(long = "leader-lease", value_name = "SECONDS", value_parser = parse_seconds, default_value = "5")]
    pub leader_lease: Duration,
    /// host:port clients and executors reach this scheduler at, as its standbys show it;
    /// default: the bound address.
    #[arg(long = "advertise", value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Directory of the embedded state store; one scheduler at a time may use it.
    #[arg(long = "state-dir", value_name = "DIR", default_value = "baton-state")]
    pub state_dir: PathBuf,
    /// Seconds a restarted scheduler waits for the executors holding its queries'
    /// output to register again before it computes that output elsewhere.
    #[arg(long = "recovery-grace", value_name = "SECONDS", value_parser = parse_seconds, default_value = "10")]
    pub recovery_grace: Duration,
}

/// What the scheduler's flags say about who may call it, and how it dials executors.
pub(super) struct SchedulerSecurity {
    /// Checks every call.
    pub auth: Authenticator,
    /// TLS of its listener.
    pub server_tls: Option<tonic::transport::ServerTlsConfig>,
    /// How it dials executors (for results).
    pub dialer: Dialer,
}

impl SchedulerConfig {
    /// Loads the users file, the secret and the certificates the flags name.
    pub(super) fn security(&self) -> Result<SchedulerSecurity, SecurityError> {
        let users = self.users.as_deref().map(Users::load).transpose()?;
        let secret = self.cluster.secret()?;
        if users.is_some() && secret.is_none() {
            return Err(SecurityError::Secret(
                "--users needs a cluster secret (BATON_CLUSTER_SECRET or --cluster-secret-file) \
                 for the executors"
                    .into(),
            ));
        }
        Ok(SchedulerSecurity {
            dialer: self.cluster.dialer(secret.as_deref())?,
            server_tls: self.server_tls()?,
            auth: Authenticator::new(users, secret),
        })
    }
}

impl SchedulerConfig {
    /// The TLS its endpoints serve with, if the flags name certificates.
    pub fn server_tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, SecurityError> {
        self.cluster.tls.server(ClientCertificates::Optional)
    }
}

impl Default for SchedulerConfig {
    /// The defaults of the flags.
    fn default() -> Self {
        crate::config::defaults_of::<Self>()
    }
}
