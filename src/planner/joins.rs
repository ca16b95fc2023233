//! Making joins safe to split across tasks.
//!
//! A `CollectLeft` hash join (and a nested-loop join) whose join type emits build-side
//! rows at the end — Left, LeftSemi, LeftAnti, LeftMark, Full — tracks which build rows
//! matched in a bitmap shared by all probe partitions of one plan instance, and only the
//! last probe partition to finish emits them. Distributed, the probe partitions run as
//! tasks on different executors, each with its own instance, so no instance ever sees all
//! of them finish and those rows would be lost or repeated. Such joins are rewritten:
//! * a hash join becomes `Partitioned`: both sides are hash-repartitioned on the join
//!   keys, so each task owns its build rows outright;
//! * a null-aware anti join (`NOT IN`) or a nested-loop join needs every probe row in one
//!   place, so its probe side is coalesced into a single partition.

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::Partitioning;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

/// True for join types whose build-side rows are emitted after the whole probe side.
fn emits_build_rows_at_end(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Left
            | JoinType::LeftAnti
            | JoinType::LeftSemi
            | JoinType::LeftMark
            | JoinType::Full
    )
}

/// Rewrites every join of `plan` that would be wrong when its probe partitions run apart.
pub fn distribute_joins(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(plan.transform_up(rewrite_join)?.data)
}

fn single_partition(plan: &Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    if plan.output_partitioning().partition_count() <= 1 {
        plan.clone()
    } else {
        Arc::new(CoalescePartitionsExec::new(plan.clone()))
    }
}

fn rewrite_join(node: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    if let Some(join) = node.downcast_ref::<NestedLoopJoinExec>() {
        if emits_build_rows_at_end(*join.join_type())
            && join.right().output_partitioning().partition_count() > 1
        {
            let children = vec![join.left().clone(), single_partition(join.right())];
            return Ok(Transformed::yes(replace_children_if_necessary(
                node, children,
            )?));
        }
        return Ok(Transformed::no(node));
    }
    let Some(join) = node.downcast_ref::<HashJoinExec>() else {
        return Ok(Transformed::no(node));
    };
    if *join.partition_mode() != PartitionMode::CollectLeft
        || !emits_build_rows_at_end(*join.join_type())
        || join.right().output_partitioning().partition_count() <= 1
    {
        return Ok(Transformed::no(node));
    }
    if join.null_aware {
        let children = vec![join.left().clone(), single_partition(join.right())];
        return Ok(Transformed::yes(replace_children_if_necessary(
            node, children,
        )?));
    }
    let build = match join.left().downcast_ref::<CoalescePartitionsExec>() {
        Some(coalesce) => coalesce.input().clone(),
        None => join.left().clone(),
    };
    let partitions = join.right().output_partitioning().partition_count();
    let (left_keys, right_keys): (Vec<_>, Vec<_>) = join.on().iter().cloned().unzip();
    let left: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
        build,
        Partitioning::Hash(left_keys, partitions),
    )?);
    let right: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
        join.right().clone(),
        Partitioning::Hash(right_keys, partitions),
    )?);
    let rewritten = join
        .builder()
        .with_partition_mode(PartitionMode::Partitioned)
        .with_new_children(vec![left, right])?
        .recompute_properties()
        .build_exec()?;
    Ok(Transformed::yes(rewritten))
}
