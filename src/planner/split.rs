//! Split units: a stage whose tasks are the partitions of its file scans gets one task
//! per unit of about `unit` bytes of file data (byte ranges; a Parquet row group is read
//! by the range that holds its middle, a CSV line by the range where it starts), so
//! that the central queue hands a fast executor more units than a slow one.
//!
//! Only scans whose partitions become the stage's partitions are split: the path from
//! the stage's root down to the scan runs through operators that work partition by
//! partition (filters, projections, partial aggregates, a join's probe side, unions),
//! each requiring no distribution of that input. Anything else (a scan read whole by a
//! join's build side, a scan under an operator that needs co-partitioned inputs) keeps
//! the partitions DataFusion planned.

use std::sync::Arc;

use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::physical_expr::Distribution;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode,
};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

/// Units one scan is split into at most, however small the unit.
pub const MAX_UNITS_PER_SCAN: usize = 1024;

/// `plan` with the scans whose partitions are its partitions split into units of about
/// `unit` bytes (a scan already split finer keeps its ranges); `plan` itself when none
/// is, or when `unit` is 0 (splitting off).
pub fn split_scans(plan: Arc<dyn ExecutionPlan>, unit: u64) -> Result<Arc<dyn ExecutionPlan>> {
    if unit == 0 {
        return Ok(plan);
    }
    Ok(split(&plan, unit)?.unwrap_or(plan))
}

/// The split `plan`, or None when nothing under it was split.
fn split(plan: &Arc<dyn ExecutionPlan>, unit: u64) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if let Some(scan) = plan.downcast_ref::<DataSourceExec>() {
        return split_scan(scan, unit);
    }
    let children = plan.children();
    if children.is_empty() || !splits_through(plan) {
        return Ok(None);
    }
    let required = plan.input_distribution_requirements().into_per_child();
    let mut changed = false;
    let mut rebuilt = Vec::with_capacity(children.len());
    for (child, distribution) in children.into_iter().zip(required) {
        let split_child = match distribution {
            Distribution::UnspecifiedDistribution => split(child, unit)?,
            _ => None,
        };
        changed |= split_child.is_some();
        rebuilt.push(split_child.unwrap_or_else(|| child.clone()));
    }
    if !changed {
        return Ok(None);
    }
    let partitions: Vec<usize> = rebuilt
        .iter()
        .map(|c| c.output_partitioning().partition_count())
        .collect();
    let node = replace_children_if_necessary(plan.clone(), rebuilt)?;
    // The partitions must follow the split inputs; an operator that fixes its own count
    // (a round-robin repartition, say) keeps the plan as it was.
    let expected = if plan.is::<UnionExec>() {
        partitions.iter().sum()
    } else {
        *partitions.last().unwrap_or(&0)
    };
    Ok((node.output_partitioning().partition_count() == expected).then_some(node))
}

/// Whether `plan`'s partitions follow its inputs' one for one: an operator of one input,
/// or a union, or a join that reads its first input whole (its partitions are the
/// second's).
fn splits_through(plan: &Arc<dyn ExecutionPlan>) -> bool {
    match plan.children().len() {
        1 => true,
        _ if plan.is::<UnionExec>() => true,
        2 => {
            let collect_left = plan
                .downcast_ref::<HashJoinExec>()
                .is_some_and(|join| *join.partition_mode() == PartitionMode::CollectLeft);
            collect_left || plan.is::<CrossJoinExec>() || plan.is::<NestedLoopJoinExec>()
        }
        _ => false,
    }
}

/// `scan` in units of about `unit` bytes, or None when it has as many partitions already
/// or its source cannot be split (not files, or files whose partitions mean something).
fn split_scan(scan: &DataSourceExec, unit: u64) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(files) = scan.data_source().downcast_ref::<FileScanConfig>() else {
        return Ok(None);
    };
    let bytes: u64 = files
        .file_groups
        .iter()
        .flat_map(|group| group.iter())
        .map(|file| file.effective_size())
        .sum();
    let units = (bytes.div_ceil(unit) as usize).min(MAX_UNITS_PER_SCAN);
    let current = scan.properties().output_partitioning().partition_count();
    if units <= current {
        return Ok(None);
    }
    let mut options = ConfigOptions::default();
    options.optimizer.repartition_file_min_size = 0;
    let split = scan.repartitioned(units, &options)?;
    Ok(split.filter(|s| s.output_partitioning().partition_count() > current))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::displayable;

    /// The partition counts of the file scans in `plan`, top down.
    fn scan_partitions(plan: &Arc<dyn ExecutionPlan>) -> Vec<usize> {
        let mut counts = Vec::new();
        if plan.is::<DataSourceExec>() {
            counts.push(plan.output_partitioning().partition_count());
        }
        for child in plan.children() {
            counts.extend(scan_partitions(child));
        }
        counts
    }

    async fn physical(sql: &str) -> Arc<dyn ExecutionPlan> {
        crate::planner::tpch_physical_plan(sql).await
    }

    #[tokio::test]
    async fn a_scan_stage_gets_one_task_per_unit_and_keeps_its_rows_apart() {
        let plan =
            physical("SELECT l_orderkey, l_quantity FROM lineitem WHERE l_quantity > 10").await;
        let before = plan.output_partitioning().partition_count();
        let split = split_scans(plan.clone(), 64 << 10).unwrap();
        let after = split.output_partitioning().partition_count();
        assert!(
            after > before,
            "{}",
            displayable(split.as_ref()).indent(true)
        );
        assert!(after <= MAX_UNITS_PER_SCAN);
        // Byte ranges of one file, back to back: nothing read twice, nothing left out.
        let scan = find_scan(&split).expect("a scan");
        let files = scan.data_source().downcast_ref::<FileScanConfig>().unwrap();
        let mut ranges: Vec<(String, i64, i64)> = files
            .file_groups
            .iter()
            .flat_map(|g| g.iter())
            .map(|f| {
                let range = f.range.clone().expect("a range");
                (f.object_meta.location.to_string(), range.start, range.end)
            })
            .collect();
        ranges.sort();
        for pair in ranges.windows(2) {
            if pair[0].0 == pair[1].0 {
                assert_eq!(pair[0].2, pair[1].1, "ranges meet: {ranges:?}");
            }
        }
        assert!(ranges.iter().all(|(_, start, end)| start < end));
    }

    fn find_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<&DataSourceExec> {
        if let Some(scan) = plan.downcast_ref::<DataSourceExec>() {
            return Some(scan);
        }
        plan.children().into_iter().find_map(|c| find_scan(c))
    }

    #[tokio::test]
    async fn off_or_coarser_than_the_plan_leaves_it_alone() {
        let plan = physical("SELECT count(*) FROM orders WHERE o_totalprice > 1000").await;
        let before = scan_partitions(&plan);
        assert_eq!(
            scan_partitions(&split_scans(plan.clone(), 0).unwrap()),
            before
        );
        assert_eq!(
            scan_partitions(&split_scans(plan, 1 << 40).unwrap()),
            before
        );
    }

    #[tokio::test]
    async fn a_build_side_read_whole_is_not_split() {
        // The small table is the build side of a CollectLeft join: every task reads it
        // whole, so its partitions do not make tasks.
        let plan = physical(
            "SELECT n_name, s_name FROM nation JOIN supplier ON n_nationkey = s_nationkey",
        )
        .await;
        let split = split_scans(plan.clone(), 1).unwrap();
        let shape = |p: &Arc<dyn ExecutionPlan>| displayable(p.as_ref()).indent(true).to_string();
        assert!(shape(&plan).contains("nation.parquet"), "{}", shape(&plan));
        // The probe side (supplier) is split; the build side (nation) is not.
        assert!(
            scan_partitions(&split).iter().sum::<usize>() > scan_partitions(&plan).iter().sum()
        );
        for (line_before, line_after) in shape(&plan).lines().zip(shape(&split).lines()) {
            if line_before.contains("nation.parquet") {
                assert_eq!(line_before, line_after);
            }
        }
    }
}
