//! The DAG planner: a DataFusion physical plan becomes a DAG of stages, and stage plans
//! become bytes (datafusion-proto plus [`BatonCodec`] for Baton's operators) and back.

mod codec;
mod cost;
mod joins;
mod scan_options;
mod split;
mod stages;
mod wire;
#[cfg(test)]
pub(crate) mod wire_tests;

pub use codec::{BatonCodec, decode_plan, encode_plan};
pub use cost::{ROWS_PER_UNIT, StageEstimate, estimate_stages};
pub use joins::distribute_joins;
pub use split::{MAX_UNITS_PER_SCAN, split_scans};
pub use stages::{StageDag, StagePlan, gathers_a_stage, operator_summary, plan_stages};

/// Calls `f` on each of an operator's own expressions in turn until it says stop: the
/// body of `ExecutionPlan::apply_expressions` for Baton's operators.
pub fn visit_exprs(
    exprs: &[std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>],
    f: &mut dyn FnMut(
        &std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>,
    ) -> datafusion::error::Result<
        datafusion::common::tree_node::TreeNodeRecursion,
    >,
) -> datafusion::error::Result<datafusion::common::tree_node::TreeNodeRecursion> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    for expr in exprs {
        if f(expr)? == TreeNodeRecursion::Stop {
            return Ok(TreeNodeRecursion::Stop);
        }
    }
    Ok(TreeNodeRecursion::Continue)
}

/// The child a single-input operator named `name` is rebuilt over
/// (`ExecutionPlan::with_new_children`), or an error when there is not exactly one.
pub fn only_child(
    name: &str,
    mut children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    match children.len() {
        1 => Ok(children.swap_remove(0)),
        n => Err(datafusion::error::DataFusionError::Internal(format!(
            "{name} takes exactly one child, got {n}"
        ))),
    }
}

/// Errors of planning and plan serialization.
#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    /// DataFusion could not plan, rewrite or (de)serialize the plan.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// The plan bytes are not a valid datafusion-proto plan.
    #[error("invalid plan bytes: {0}")]
    Decode(#[from] prost::DecodeError),
    /// No thread could be started to plan on.
    #[error("could not start a planning thread: {0}")]
    Thread(std::io::Error),
    /// Planning ended without a result (it panicked).
    #[error("planning was aborted")]
    Aborted,
}

/// `sql` planned over TPC-H SF 0.01 with 4 partitions, for planner tests.
#[cfg(test)]
async fn tpch_physical_plan(
    sql: &str,
) -> std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan> {
    let cache = std::env::temp_dir().join("baton-test-cache");
    let catalog =
        crate::datagen::cached_tpch(&cache, 0.01, crate::catalog::TableFormat::Parquet).unwrap();
    let ctx = datafusion::prelude::SessionContext::new_with_config(
        crate::config::distributed_session_config(4),
    );
    crate::catalog::register_catalog(&ctx, &catalog)
        .await
        .unwrap();
    wire_tests::planned(&ctx, sql).await
}

/// Stages of `sql` planned over TPC-H SF 0.01 with 4 partitions, for planner tests.
#[cfg(test)]
async fn tpch_stages_of(sql: &str) -> StageDag {
    plan_stages(tpch_physical_plan(sql).await, 0, Some(&[])).unwrap()
}
