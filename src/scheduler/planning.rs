//! Planning a submission into stages, each on an OS thread of its own, off the runtime
//! that carries the scheduler's and executors' streams: a big query's planning (tens of
//! milliseconds of CPU) then never holds up a task push, a status or a small query.
//!
//! When small queries go first (the `priority` policy), the planning thread of a query
//! whose logical plan is bigger than [`SMALL_PLAN_NODES`] moves to the OS's lowest
//! priority (the class background tasks run in) before it optimizes and plans it
//! physically, the costly part: a small query submitted together with big ones then has
//! its plan, and its first tasks running, before theirs.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;

use super::{StageSpec, Submission};
use crate::planner::{self, PlannerError};
use crate::thread_priority::lower_current_thread_to_idle;

/// Logical plans of at most this many nodes (a join of two tables, aggregated, sorted
/// and limited) are planned at normal OS priority; bigger ones at the lowest.
const SMALL_PLAN_NODES: usize = 8;

/// How a scheduler plans submissions.
#[derive(Clone)]
pub struct Planner {
    /// The session SQL is planned in.
    pub session: SessionContext,
    /// Whether bigger plans get a lower OS priority while they are planned.
    pub small_first: bool,
}

impl Planner {
    /// Plans `submission` into stages on a new thread. Its async parts (catalog I/O) run
    /// on that thread too, outside any runtime: local object stores then read files
    /// inline instead of handing each read to a runtime's blocking pool and waiting to be
    /// woken, which under load cost milliseconds per table.
    pub async fn plan(
        &self,
        submission: Submission,
    ) -> Result<(Vec<StageSpec>, SchemaRef), PlannerError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let planner = self.clone();
        std::thread::Builder::new()
            .name("baton-planner".into())
            .spawn(move || {
                let _ = done.send(futures::executor::block_on(planner.plan_here(submission)));
            })
            .map_err(PlannerError::Thread)?;
        result.await.map_err(|_| PlannerError::Aborted)?
    }

    async fn plan_here(
        &self,
        submission: Submission,
    ) -> Result<(Vec<StageSpec>, SchemaRef), PlannerError> {
        let plan = match submission {
            Submission::Sql(sql) => {
                let frame = self.session.sql(&sql).await?;
                if self.small_first {
                    let nodes = plan_nodes(frame.logical_plan());
                    if nodes > SMALL_PLAN_NODES {
                        tracing::debug!(nodes, "planning a big query at the lowest priority");
                        lower_current_thread_to_idle();
                    }
                }
                frame.create_physical_plan().await?
            }
            Submission::Plan(bytes) => {
                let ctx: Arc<TaskContext> = self.session.task_ctx();
                planner::decode_plan(&bytes, &ctx)?
            }
        };
        let dag = planner::plan_stages(plan)?;
        let estimates = planner::estimate_stages(&dag);
        let stages = dag
            .stages
            .iter()
            .zip(estimates)
            .map(|(s, estimate)| {
                Ok(StageSpec {
                    cost: estimate.cost,
                    output_rows: estimate.output_rows,
                    cost_per_input_row: estimate.cost_per_input_row,
                    plan: planner::encode_plan(s.plan.clone())?.into(),
                    inputs: s.inputs.clone(),
                    tasks: s.tasks,
                })
            })
            .collect::<Result<Vec<_>, PlannerError>>()?;
        Ok((stages, dag.schema))
    }
}

/// Nodes of a logical plan, subqueries included.
fn plan_nodes(plan: &LogicalPlan) -> usize {
    let mut nodes = 0;
    let _ = plan.apply_with_subqueries(|_| {
        nodes += 1;
        Ok(TreeNodeRecursion::Continue)
    });
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plan_nodes_counts_subqueries_too() {
        let ctx = SessionContext::new();
        let plan = |sql: &'static str| {
            let ctx = ctx.clone();
            async move { ctx.sql(sql).await.unwrap().logical_plan().clone() }
        };
        let small = plan_nodes(&plan("select 1 as a").await);
        let nested = plan_nodes(&plan("select a from (select 1 as a) where a in (select 1)").await);
        assert!(small >= 2, "projection over an empty relation: {small}");
        assert!(nested > small + 2, "{nested} nodes against {small}");
    }
}
