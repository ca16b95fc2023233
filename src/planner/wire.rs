//! Rewrites that keep a plan's meaning through datafusion-proto.
//!
//! datafusion-proto encodes a `LazyMemoryExec` (`generate_series`, `range`) with its
//! projected schema but not its projection: decoded, the generator emits every column
//! under a schema of fewer (`count(*)` over a series projects none), and the stage
//! fails. Before cutting, such a scan becomes the whole scan under a `ProjectionExec`,
//! which encodes faithfully.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::memory::LazyMemoryExec;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};

/// `plan` with every projected `LazyMemoryExec` replaced by an unprojected one under a
/// projection.
pub fn unproject_lazy_scans(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(scan) = node.downcast_ref::<LazyMemoryExec>() else {
            return Ok(Transformed::no(node));
        };
        let [generator] = scan.generators().as_slice() else {
            return Ok(Transformed::no(node));
        };
        // A fresh copy of the generator shows the columns it really emits.
        let probe = generator.read().reset_state();
        let Some(batch) = probe.write().generate_next_batch()? else {
            return Ok(Transformed::no(node));
        };
        let full = batch.schema();
        let projected = scan.schema();
        if full.fields().len() == projected.fields().len() {
            return Ok(Transformed::no(node));
        }
        let whole: Arc<dyn ExecutionPlan> = Arc::new(LazyMemoryExec::try_new(
            full.clone(),
            scan.generators().clone(),
        )?);
        let exprs = projected
            .fields()
            .iter()
            .map(|field| {
                let index = full.index_of(field.name())?;
                Ok(ProjectionExpr::new(
                    Arc::new(Column::new(field.name(), index)),
                    field.name().clone(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformed::yes(Arc::new(ProjectionExec::try_new(
            exprs, whole,
        )?)))
    })
    .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{decode_plan, encode_plan};
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn a_series_projected_to_no_column_counts_the_same_after_decoding() {
        let ctx = SessionContext::new();
        let plan = ctx
            .sql("select count(*) as n from generate_series(1, 2000) as t(v)")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let plan = unproject_lazy_scans(plan).unwrap();
        let decoded = decode_plan(&encode_plan(plan).unwrap(), &ctx.task_ctx()).unwrap();
        let batches = datafusion::physical_plan::collect(decoded, ctx.task_ctx())
            .await
            .unwrap();
        let shown = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(shown.contains("| 2000 |"), "{shown}");
    }
}
