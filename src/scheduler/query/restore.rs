//! A query as the state store keeps it, and back: what a restarted scheduler resumes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use datafusion::arrow::datatypes::Schema;
use prost::Message;
use tracing::warn;

use super::{Query, StageFilter, StageSpec, TaskRef, millis};
use crate::proto::{QueryState, StageState, StoredFilter, StoredQuery, StoredStage, StoredTask};
use crate::shuffle::MapLocation;

/// The moment `ms` milliseconds after the Unix epoch; None for 0 (not reached).
fn time_of(ms: u64) -> Option<SystemTime> {
    (ms > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// Why a result was freed, as the status and a later fetch name it.
fn released_reason(reason: &str) -> Option<&'static str> {
    match reason {
        "" => None,
        "fetched" => Some("fetched"),
        "expired" => Some("expired"),
        "cancelled" => Some("cancelled"),
        _ => Some("released"),
    }
}

impl Query {
    /// The query's record in the state store: its stages as submitted, and how it ended
    /// once it has.
    pub fn to_stored(&self) -> StoredQuery {
        let schema = self
            .schema
            .as_ref()
            .and_then(|s| datafusion_proto::protobuf::Schema::try_from(s.as_ref()).ok())
            .map(|s| s.encode_to_vec())
            .unwrap_or_default();
        let ended = self.is_finished();
        StoredQuery {
            query_id: self.id.to_string(),
            label: self.label.clone(),
            owner: self.owner.to_string(),
            settings: self.settings.clone(),
            schema,
            stages: self
                .stages
                .iter()
                .map(|s| StoredStage {
                    plan: s.plan.to_vec(),
                    inputs: s.inputs.clone(),
                    tasks: s.tasks.len() as u32,
                    cost: s.task_cost * s.tasks.len() as f64,
                    output_rows: s.task_output_rows * s.tasks.len() as f64,
                    cost_per_input_row: s.cost_per_input_row,
                    operators: s.operators.clone(),
                    filters: s
                        .filters
                        .iter()
                        .map(|f| StoredFilter {
                            filter_id: f.id,
                            build_stage: f.build_stage,
                        })
                        .collect(),
                    analyzed: s.analyzed.clone(),
                })
                .collect(),
            submitted_at_ms: millis(Some(self.submitted_at)),
            seq: self.seq,
            end_state: if ended {
                self.state as i32
            } else {
                QueryState::Unspecified as i32
            },
            error: self.error.clone().unwrap_or_default(),
            ended_at_ms: millis(self.ended_at),
            results_released: self.results_released.unwrap_or_default().to_string(),
        }
    }

    /// The record of a finished task (its output's place, or the output itself); None
    /// while it has no output.
    pub fn stored_task(&self, task: TaskRef) -> Option<StoredTask> {
        let t = self
            .stages
            .get(task.stage as usize)?
            .tasks
            .get(task.partition as usize)?;
        let output = t.output.as_ref();
        if output.is_none() && t.inline_result.is_none() {
            return None;
        }
        Some(StoredTask {
            query_id: self.id.to_string(),
            stage_id: task.stage,
            partition: task.partition,
            executor_id: output.map(|o| o.executor_id.clone()).unwrap_or_default(),
            flight_address: output.map(|o| o.flight_address.clone()).unwrap_or_default(),
            rows: t.rows_out,
            inline_result: t.inline_result.as_ref().map(|b| b.to_vec()),
            key_summaries: t.key_summaries.clone(),
        })
    }

    /// Every task of the query that has output, as records.
    pub fn stored_tasks(&self) -> Vec<StoredTask> {
        (0..self.stages.len() as u32)
            .flat_map(|stage| {
                (0..self.stages[stage as usize].tasks.len() as u32)
                    .map(move |partition| TaskRef { stage, partition })
            })
            .filter_map(|task| self.stored_task(task))
            .collect()
    }

    /// The query a record describes, with the finished tasks of `tasks`: an ended query
    /// as it ended; an unfinished one queued, its finished tasks keeping their output
    /// (computed again only where an executor that held it does not come back), and its
    /// stages waiting for what is left of their inputs. A record that cannot be read is
    /// an error; a task record that does not fit the query is skipped.
    pub fn restore(stored: StoredQuery, tasks: Vec<StoredTask>) -> Result<Self, String> {
        let schema = datafusion_proto::protobuf::Schema::decode(stored.schema.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|s| Schema::try_from(&s).map_err(|e| e.to_string()))
            .map_err(|e| format!("query {}: result schema: {e}", stored.query_id))?;
        let specs = stored
            .stages
            .iter()
            .map(|s| StageSpec {
                plan: Bytes::from(s.plan.clone()),
                inputs: s.inputs.clone(),
                tasks: s.tasks as usize,
                cost: s.cost,
                output_rows: s.output_rows,
                cost_per_input_row: s.cost_per_input_row,
                operators: s.operators.clone(),
                filters: s
                    .filters
                    .iter()
                    .map(|f| StageFilter {
                        id: f.filter_id,
                        build_stage: f.build_stage,
                    })
                    .collect(),
                analyzed: s.analyzed.clone(),
            })
            .collect::<Vec<_>>();
        let count = specs.len() as u32;
        if specs.iter().enumerate().any(|(i, s)| {
            s.inputs.iter().any(|&input| input >= i as u32)
                || s.filters.iter().any(|f| f.build_stage >= count)
        }) {
            return Err(format!(
                "query {}: a stage reads a stage that does not come before it",
                stored.query_id
            ));
        }
        let mut query = Self::new(
            stored.query_id.as_str().into(),
            stored.label,
            specs,
            Arc::new(schema),
        );
        query.owner = stored.owner.as_str().into();
        query.settings = stored.settings;
        query.seq = stored.seq;
        query.submitted_at = time_of(stored.submitted_at_ms).unwrap_or_else(SystemTime::now);
        let end_state = QueryState::try_from(stored.end_state).unwrap_or(QueryState::Unspecified);
        if end_state != QueryState::Unspecified {
            query.started_at = Some(query.submitted_at);
            query.state = end_state;
            query.error = (!stored.error.is_empty()).then_some(stored.error);
            query.ended_at = time_of(stored.ended_at_ms).or_else(|| Some(SystemTime::now()));
            query.results_released = released_reason(&stored.results_released);
            // What an EXPLAIN ANALYZE measured is not stored: its answer is gone.
            if query.is_analyze() && end_state == QueryState::Succeeded {
                query.results_released.get_or_insert("released");
            }
        }
        for task in tasks {
            if !query.restore_task(task) {
                warn!(query_id = %query.id, "a stored task does not fit its query; skipped");
            }
        }
        if end_state == QueryState::Unspecified {
            query.restore_readiness();
        } else {
            for stage in &mut query.stages {
                stage.state = StageState::Done;
            }
        }
        Ok(query)
    }

    /// Puts a finished task's record back; false when it names no task of the query.
    fn restore_task(&mut self, task: StoredTask) -> bool {
        let Some(stage) = self.stages.get_mut(task.stage_id as usize) else {
            return false;
        };
        let Some(t) = stage.tasks.get_mut(task.partition as usize) else {
            return false;
        };
        if t.output.is_none() && t.inline_result.is_none() {
            stage.done += 1;
            self.remaining_cost -= stage.task_cost;
        }
        t.output = (!task.executor_id.is_empty()).then_some(MapLocation {
            executor_id: task.executor_id,
            flight_address: task.flight_address,
        });
        t.inline_result = task.inline_result.map(Bytes::from);
        if let Some(ipc) = &t.inline_result {
            metrics::gauge!("baton_result_bytes_held").increment(ipc.len() as f64);
        }
        t.rows_out = task.rows;
        t.key_summaries = task.key_summaries;
        true
    }

    /// Sets the stages of a restored, unfinished query from its finished tasks: complete
    /// stages are done (and released when every consumer is complete too), and every
    /// other stage waits for its incomplete inputs; [`Query::start`] then queues what
    /// can run. Also run again on a restored query still queued when an executor comes
    /// back without some of its output.
    pub(super) fn restore_readiness(&mut self) {
        let complete: Vec<bool> = self.stages.iter().map(|s| s.is_complete()).collect();
        if complete.last().copied().unwrap_or(true) {
            let now = SystemTime::now();
            self.started_at = Some(self.submitted_at);
            for stage in &mut self.stages {
                stage.state = StageState::Done;
            }
            self.finish(QueryState::Succeeded, None);
            self.ended_at = Some(now);
            return;
        }
        for sid in 0..self.stages.len() {
            let stage = &mut self.stages[sid];
            if complete[sid] {
                stage.state = StageState::Done;
                let read_by_all = stage.consumers.iter().all(|&c| complete[c as usize]);
                if read_by_all && !stage.consumers.is_empty() {
                    stage.released = true;
                    for t in &mut stage.tasks {
                        t.output = None;
                    }
                }
                continue;
            }
            let waits: HashSet<u32> = stage
                .inputs
                .iter()
                .chain(&stage.waits_for)
                .copied()
                .filter(|&i| !complete[i as usize])
                .collect();
            stage.state = StageState::Waiting;
            stage.waiting_on = waits.len();
        }
    }
}
