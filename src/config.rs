//! Settings every Baton process shares: DataFusion session options for distributed
//! plans and the gRPC message-size limits.

use std::time::Duration;

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

/// Default number of partitions DataFusion plans with (and so tasks per stage).
pub const DEFAULT_TARGET_PARTITIONS: usize = 4;

/// The DataFusion session configuration for plans that Baton distributes.
///
/// * Round-robin repartitioning is off: a round-robin `RepartitionExec` inside a stage
///   would make one task pull every input partition; scans are already split by file range.
/// * File-scan work stealing is off: a task runs one partition alone, so a scan partition
///   that takes over its idle siblings' files would read them a second time.
/// * Dynamic filter pushdown is off: a hash join's build side cannot update a filter in
///   a scan that runs in another stage (another process), and waiting for it would hang.
pub fn distributed_session_config(target_partitions: usize) -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_target_partitions(target_partitions.max(1))
        .with_information_schema(true);
    let options = config.options_mut();
    options.optimizer.enable_round_robin_repartition = false;
    options.execution.enable_file_stream_work_stealing = false;
    options.optimizer.enable_dynamic_filter_pushdown = false;
    options.optimizer.enable_topk_dynamic_filter_pushdown = false;
    options.optimizer.enable_join_dynamic_filter_pushdown = false;
    options.optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    config
}
