//! Settings every Baton process shares: DataFusion session options for distributed
//! plans, gRPC message-size limits, liveness timing, and the parsers of flag units.

use std::time::Duration;

use datafusion::common::config::ConfigOptions;
use datafusion::prelude::SessionConfig;

/// Largest gRPC / Flight message any Baton client or server accepts or sends.
///
/// tonic's default decode limit is 4 MiB; serialized plans with large literal lists and
/// wide batches exceed it, so every endpoint sets this limit explicitly.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// How often an executor tells the scheduler it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// An executor silent for this long (three missed heartbeats) is taken as lost.
pub const EXECUTOR_TIMEOUT: Duration = Duration::from_secs(15);

/// How often every gRPC / Flight connection pings its peer (HTTP/2 keepalive), so a peer
/// that vanished without closing (a host gone, a link cut) is noticed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A ping unanswered for this long closes the connection, failing its calls.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A server builder with Baton's transport settings: no Nagle delay, HTTP/2 keepalive.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// The host's cores (1 when unknown): an executor's default task slots, the scheduler's
/// planning threads.
pub fn host_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Default number of partitions a client planning for Baton uses (`baton sql
/// --scheduler --catalog`); the scheduler's own comes from its `--partitions`.
pub const DEFAULT_TARGET_PARTITIONS: usize = 4;

/// Settings every distributed plan and task keeps off, whatever a session says
/// ([`plan_for_distribution`]). A session may `SET` them and sees its value; it changes
/// nothing, and they never travel to executors with a task's settings.
pub const DISTRIBUTED_SETTINGS: [&str; 2] = [
    "datafusion.optimizer.enable_round_robin_repartition",
    "datafusion.execution.enable_file_stream_work_stealing",
];

/// A session's memory limit (DataFusion's runtime setting), which travels with its tasks
/// as bytes: each of them may hold at most that much of its executor's memory.
pub const MEMORY_LIMIT_SETTING: &str = "datafusion.runtime.memory_limit";

/// DataFusion's switch of every dynamic filter kind at once; setting it sets the others.
pub const DYNAMIC_FILTERS_SETTING: &str = "datafusion.optimizer.enable_dynamic_filter_pushdown";

/// The dynamic filters executors push inside a stage (see `executor::dynamic_filters`):
/// TopK, hash join and MIN/MAX aggregate filters.
pub const STAGE_DYNAMIC_FILTER_SETTINGS: [&str; 3] = [
    "datafusion.optimizer.enable_topk_dynamic_filter_pushdown",
    "datafusion.optimizer.enable_join_dynamic_filter_pushdown",
    "datafusion.optimizer.enable_aggregate_dynamic_filter_pushdown",
];

/// The DataFusion session configuration plans that Baton distributes are made in, its
/// scheduler's sessions start from and its executors run tasks in: the options of
/// [`plan_for_distribution`], information_schema on (`SHOW` works).
pub fn distributed_session_config(target_partitions: usize) -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_target_partitions(target_partitions.max(1))
        .with_information_schema(true);
    plan_for_distribution(config.options_mut());
    config
}

/// Sets what every distributed plan is made with, whatever the session says:
///
/// * Round-robin repartitioning off: a round-robin `RepartitionExec` inside a stage
///   would make one task pull every input partition; scans are already split by file
///   range.
/// * File-scan work stealing off: a task runs one partition alone, so a scan partition
///   that takes over its idle siblings' files would read them a second time.
/// * Dynamic filter pushdown off: a hash join's build side cannot update a filter in a
///   scan that runs in another stage (another process), and inside a stage its filter
///   would wait for partitions other tasks run. Executors push the filters that work
///   inside a stage themselves, and Baton's join filters carry the others between
///   stages.
pub fn plan_for_distribution(options: &mut ConfigOptions) {
    options.optimizer.enable_round_robin_repartition = false;
    options.execution.enable_file_stream_work_stealing = false;
    switch_dynamic_filters(options, false);
}

/// `config` with DataFusion's dynamic filters on, as DataFusion defaults them: what a
/// scheduler's sessions start with (and show), and executors run tasks with unless a
/// task's settings say otherwise. Executors push the kinds of
/// [`STAGE_DYNAMIC_FILTER_SETTINGS`] inside a stage; plans are made without any
/// ([`plan_for_distribution`]).
pub fn with_dynamic_filters(mut config: SessionConfig) -> SessionConfig {
    switch_dynamic_filters(config.options_mut(), true);
    config
}

/// Sets DataFusion's switch of every dynamic filter kind and each kind's own, as a
/// `SET` of [`DYNAMIC_FILTERS_SETTING`] does.
pub fn switch_dynamic_filters(options: &mut ConfigOptions, on: bool) {
    let optimizer = &mut options.optimizer;
    optimizer.enable_dynamic_filter_pushdown = on;
    optimizer.enable_topk_dynamic_filter_pushdown = on;
    optimizer.enable_join_dynamic_filter_pushdown = on;
    optimizer.enable_aggregate_dynamic_filter_pushdown = on;
}

/// A flag that turns a feature on or off (`on` / `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// The feature runs.
    On,
    /// It does not.
    Off,
}

/// A flag given in MiB, as bytes (saturating: any table fits a huge value).
pub fn parse_mib(text: &str) -> Result<u64, String> {
    let mib: u64 = text
        .parse()
        .map_err(|e| format!("{text:?} is no MiB count: {e}"))?;
    Ok(mib.saturating_mul(1 << 20))
}

/// A flag given in KiB, as bytes (saturating).
pub fn parse_kib(text: &str) -> Result<u64, String> {
    let kib: u64 = text
        .parse()
        .map_err(|e| format!("{text:?} is no KiB count: {e}"))?;
    Ok(kib.saturating_mul(1 << 10))
}

/// A flag given in milliseconds, as a duration.
pub fn parse_millis(text: &str) -> Result<std::time::Duration, String> {
    let millis: u64 = text
        .parse()
        .map_err(|e| format!("{text:?} is no millisecond count: {e}"))?;
    Ok(Duration::from_millis(millis))
}

/// A flag given in seconds (fractions allowed), as a duration.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|e| format!("{text:?} is no number of seconds: {e}"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?} seconds: {e}"))
}

/// The value of a flag struct when no flag is given: its defaults, as declared on the
/// flags themselves, so each default is written once.
pub fn defaults_of<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults"));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every flag has a default or is optional");
    T::from_arg_matches(&matches).expect("defaults parse")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_units_parse_into_bytes_and_durations() {
        assert_eq!(parse_mib("32"), Ok(32 << 20));
        assert_eq!(parse_kib("2"), Ok(2048));
        assert_eq!(parse_mib(&u64::MAX.to_string()), Ok(u64::MAX));
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_mib("-1").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn defaults_come_from_the_flags() {
        let scheduler = crate::scheduler::SchedulerConfig::default();
        assert_eq!(scheduler.partition_data_bytes, 128 << 20);
        assert_eq!(scheduler.result_ttl, Duration::from_secs(600));
        assert_eq!(scheduler.inline_result_bytes, 1 << 20);
        assert_eq!(scheduler.policy, crate::scheduler::PolicyKind::Priority);
        let executor = crate::executor::ExecutorConfig::default();
        assert_eq!((executor.slots, executor.preempt_slots()), (2, 2));
    }
}
