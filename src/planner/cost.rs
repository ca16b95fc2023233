//! Estimated work of each stage, for the scheduler's `priority` policy.
//!
//! An operator costs one unit plus one unit per [`ROWS_PER_UNIT`] rows it handles: the
//! larger of the rows it takes in and the rows it puts out. Rows come from DataFusion's
//! statistics (exact or estimated) where it has them. Where it has none (operators above
//! a join, a stage's shuffle reads) an operator is taken to put out the rows it takes in,
//! and a shuffle reader the rows its input stage is estimated to write. That overstates
//! filters and aggregations but keeps a long query's later stages from looking cheap:
//! counting only the operators there made a stage of 400 ms tasks look like a few rows.

use std::sync::Arc;

use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};

use super::StageDag;
use crate::shuffle::ShuffleReaderExec;

/// Rows that add one cost unit.
pub const ROWS_PER_UNIT: f64 = 10_000.0;

/// What the cost model expects of one stage (all its partitions together).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageEstimate {
    /// Estimated work, in cost units.
    pub cost: f64,
    /// Estimated rows the stage writes to its shuffle output.
    pub output_rows: f64,
    /// Cost units each row read from input stages adds: what the estimate changes by when
    /// an input writes more or fewer rows than expected.
    pub cost_per_input_row: f64,
}

/// The estimates of every stage of `dag`, indexed by stage id.
pub fn estimate_stages(dag: &StageDag) -> Vec<StageEstimate> {
    let mut walk = Walk {
        dag,
        stats: StatisticsContext::new(),
        estimates: vec![None; dag.stages.len()],
        visiting: vec![false; dag.stages.len()],
    };
    (0..dag.stages.len())
        .map(|id| walk.stage(id as u32))
        .collect()
}

/// What a stage plan is made of.
#[derive(Debug, Default)]
struct Shape {
    /// Its operators.
    operators: f64,
    /// Rows its shuffle readers are expected to read.
    input_rows: f64,
}

/// One pass over a DAG, memoizing stage estimates and DataFusion statistics.
struct Walk<'a> {
    dag: &'a StageDag,
    stats: StatisticsContext,
    estimates: Vec<Option<StageEstimate>>,
    /// Stages being estimated, so a malformed DAG with a cycle cannot recurse forever.
    visiting: Vec<bool>,
}

impl Walk<'_> {
    /// The estimate of stage `id` (nothing for an unknown id or a stage on a cycle).
    fn stage(&mut self, id: u32) -> StageEstimate {
        let i = id as usize;
        if let Some(Some(known)) = self.estimates.get(i) {
            return *known;
        }
        if self.visiting.get(i).copied().unwrap_or(true) {
            return StageEstimate::default();
        }
        self.visiting[i] = true;
        let plan = self.dag.stages[i].plan.clone();
        // The root, a shuffle writer, has no statistics: it passes on its input's rows.
        let mut shape = Shape::default();
        let (cost, output_rows) = self.operator(&plan, &mut shape);
        // The part of the cost that grows with rows, spread over the rows read: at least
        // the reading, at most a pass through every operator.
        let reading = 1.0 / ROWS_PER_UNIT;
        let cost_per_input_row = if shape.input_rows > 0.0 {
            ((cost - shape.operators) / shape.input_rows).clamp(reading, shape.operators * reading)
        } else {
            reading
        };
        let estimate = StageEstimate {
            cost,
            output_rows,
            cost_per_input_row,
        };
        self.visiting[i] = false;
        self.estimates[i] = Some(estimate);
        estimate
    }

    /// The cost of `plan` with its inputs, and the rows it is expected to put out;
    /// counts its operators and the rows it reads from other stages into `shape`.
    fn operator(&mut self, plan: &Arc<dyn ExecutionPlan>, shape: &mut Shape) -> (f64, f64) {
        let mut cost = 0.0;
        let mut rows_in = 0.0;
        for child in plan.children() {
            let (c, r) = self.operator(child, shape);
            cost += c;
            rows_in += r;
        }
        shape.operators += 1.0;
        let rows_out = if let Some(reader) = plan.downcast_ref::<ShuffleReaderExec>() {
            let rows = self.stage(reader.stage_id()).output_rows;
            shape.input_rows += rows;
            rows
        } else {
            self.stats
                .compute(plan.as_ref(), &StatisticsArgs::new())
                .ok()
                .and_then(|s| s.num_rows.get_value().copied())
                .map_or(rows_in, |r| r as f64)
        };
        (cost + 1.0 + rows_in.max(rows_out) / ROWS_PER_UNIT, rows_out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::tpch_stages_of;

    async fn estimates(sql: &str) -> Vec<StageEstimate> {
        estimate_stages(&tpch_stages_of(sql).await)
    }

    fn total(estimates: &[StageEstimate]) -> f64 {
        estimates.iter().map(|e| e.cost).sum()
    }

    #[tokio::test]
    async fn more_rows_and_more_operators_cost_more() {
        let small = total(&estimates("select * from nation").await);
        let large = total(&estimates("select * from lineitem").await);
        let deeper = total(
            &estimates("select n_regionkey % 2, count(*) from nation group by 1 order by 1").await,
        );
        assert!(small >= 1.0);
        assert!(large > small, "{large} > {small}");
        assert!(deeper > small, "{deeper} > {small}");
    }

    #[tokio::test]
    async fn stages_reading_a_large_join_are_estimated_from_their_input_stages() {
        let join = "select l_returnflag, count(*) from lineitem join orders \
                    on l_orderkey = o_orderkey group by l_returnflag";
        let stages = estimates(join).await;
        let lineitem_rows = 60_175.0; // SF 0.01
        // The last stage only reads other stages. DataFusion has no statistics there, so
        // it is taken to read what the join may put out, at least lineitem's rows (an
        // operator count alone would make it a handful of units).
        let last = stages.last().unwrap();
        assert!(last.cost > lineitem_rows / ROWS_PER_UNIT, "{stages:?}");
        assert!(last.cost_per_input_row >= 1.0 / ROWS_PER_UNIT, "{stages:?}");
        // A small query costs far less than that stage alone.
        let small = estimates("select r_name from region").await;
        assert!(total(&small) * 3.0 < last.cost, "{small:?} vs {stages:?}");
    }
}
