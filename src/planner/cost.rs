//! Estimated work of a stage, for the scheduler's `priority` policy.
//!
//! A stage costs one unit per operator plus one unit per [`ROWS_PER_UNIT`] rows that
//! DataFusion's statistics expect its operators to produce (exact or estimated). Where a
//! plan has no statistics (text files, most operators above a join) the operator count
//! alone remains, so the estimate degrades to "fewer operators first".

use std::sync::Arc;

use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};

/// Rows that add one cost unit.
pub const ROWS_PER_UNIT: f64 = 10_000.0;

/// The estimated cost of a whole stage plan (every partition), in cost units.
pub fn stage_cost(plan: &Arc<dyn ExecutionPlan>) -> f64 {
    cost_with(&StatisticsContext::new(), plan)
}

/// The cost of `plan` and its inputs; `stats` memoizes statistics across the walk.
fn cost_with(stats: &StatisticsContext, plan: &Arc<dyn ExecutionPlan>) -> f64 {
    let rows = stats
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()
        .and_then(|s| s.num_rows.get_value().copied())
        .unwrap_or(0);
    let own = 1.0 + rows as f64 / ROWS_PER_UNIT;
    own + plan
        .children()
        .iter()
        .map(|c| cost_with(stats, c))
        .sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn cost_of(ctx: &SessionContext, sql: &str) -> f64 {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        stage_cost(&plan)
    }

    #[tokio::test]
    async fn more_rows_and_more_operators_cost_more() {
        let cache = std::env::temp_dir().join("baton-test-cache");
        let catalog =
            crate::datagen::cached_tpch(&cache, 0.01, crate::catalog::TableFormat::Parquet)
                .unwrap();
        let ctx = SessionContext::new();
        crate::catalog::register_catalog(&ctx, &catalog)
            .await
            .unwrap();
        let small = cost_of(&ctx, "select * from nation").await;
        let large = cost_of(&ctx, "select * from lineitem").await;
        let deeper = cost_of(
            &ctx,
            "select n_regionkey % 2, count(*) from nation group by 1 order by 1",
        )
        .await;
        assert!(small >= 1.0);
        assert!(large > small, "{large} > {small}");
        assert!(deeper > small, "{deeper} > {small}");
    }
}
