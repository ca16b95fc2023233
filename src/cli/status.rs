//! `baton status` and `baton cancel`.

use super::{CliError, shorten};
use crate::client::{BatonClient, Login};
use crate::proto::{QueryState, QueryStatus, StageState};
use crate::scheduler::{query_state_name, stage_state_name, status_to_json};

/// The name of a query state as it comes over the wire.
fn state_name(state: i32) -> &'static str {
    query_state_name(QueryState::try_from(state).unwrap_or(QueryState::Unspecified))
}

/// The name of a stage state as it comes over the wire.
fn stage_name(state: i32) -> &'static str {
    stage_state_name(StageState::try_from(state).unwrap_or(StageState::Unspecified))
}

/// Seconds from `start` to `end` (epoch milliseconds), "-" until both are known.
fn span(start: u64, end: u64) -> String {
    if start > 0 && end >= start {
        format!("{:.3} s", (end - start) as f64 / 1000.0)
    } else {
        "-".into()
    }
}

fn print_status(status: &QueryStatus, detailed: bool) {
    let elapsed = span(status.started_at_ms, status.ended_at_ms);
    println!(
        "{}  {:<9}  {:>9}  {}",
        status.query_id,
        state_name(status.state),
        elapsed,
        shorten(&status.label)
    );
    if !status.error.is_empty() {
        println!("  error: {}", status.error);
    }
    if detailed {
        for stage in &status.stages {
            println!(
                "  stage {:>2} {:<8} tasks {}/{} done, {} running  inputs {:?}  {} ({:.3} task-s)  {}{}",
                stage.stage_id,
                stage_name(stage.state),
                stage.tasks_done,
                stage.tasks_total,
                stage.tasks_running,
                stage.input_stages,
                span(stage.started_at_ms, stage.ended_at_ms),
                stage.task_micros as f64 / 1e6,
                stage.operators,
                if stage.running.is_empty() {
                    String::new()
                } else {
                    let tasks: Vec<String> = stage
                        .running
                        .iter()
                        .map(|t| {
                            let pause = if t.suspended { " (suspended)" } else { "" };
                            format!("{}@{}{pause}", t.partition, t.executor_id)
                        })
                        .collect();
                    format!("  running {}", tasks.join(","))
                }
            );
            if !stage.filters.is_empty() {
                println!(
                    "    join filters: {}; removed {} of {} rows, {} row groups pruned",
                    stage.filters,
                    stage.filter_rows_removed,
                    stage.filter_rows_in,
                    stage.filter_row_groups_pruned
                );
            }
            if let Some(in_stage) = &stage.in_stage_filters {
                println!(
                    "    in-stage filters: {} into {} scans in {} of {} tasks; their scans skipped {} file ranges, {} row groups, {} rows",
                    in_stage.kinds.join(", "),
                    in_stage.scans,
                    stage.in_stage_filter_tasks,
                    stage.tasks_total,
                    in_stage.file_ranges_pruned,
                    in_stage.row_groups_pruned,
                    in_stage.rows_pruned
                );
            }
        }
    }
}

/// `baton status`.
pub async fn run_status(
    scheduler: &str,
    login: &Login,
    query_id: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let mut client = BatonClient::connect_as(scheduler, login).await?;
    if json {
        let value = match query_id {
            Some(id) => status_to_json(&client.status(&id).await?),
            None => {
                serde_json::Value::Array(client.list().await?.iter().map(status_to_json).collect())
            }
        };
        println!("{value:#}");
        return Ok(());
    }
    match query_id {
        Some(id) => print_status(&client.status(&id).await?, true),
        None => {
            for status in client.list().await? {
                print_status(&status, false);
            }
        }
    }
    Ok(())
}

/// `baton cancel`.
pub async fn run_cancel(scheduler: &str, login: &Login, query_id: &str) -> Result<(), CliError> {
    let mut client = BatonClient::connect_as(scheduler, login).await?;
    if client.cancel(query_id).await? {
        println!("cancelled {query_id}");
    } else {
        println!("query {query_id} had already ended");
    }
    Ok(())
}
