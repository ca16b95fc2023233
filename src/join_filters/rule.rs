//! Planning join filters: which joins get one, where its halves go, and which are kept
//! once the plan is cut into stages.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinType, NullEquality};
use datafusion::error::Result;
use datafusion::physical_expr::{Partitioning, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

use super::{KeySummaryExec, MAX_FILTER_VALUES, ProbeFilterExec};

/// A probe stage waits for its build stage only when the build stage is estimated to
/// cost at most this share of the probe stage: the wait is then short against the work
/// the filter may save.
pub const WAIT_COST_SHARE: f64 = 0.5;

/// Where the halves of one join filter are after cutting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLink {
    /// The filter's id, as its [`KeySummaryExec`] and [`ProbeFilterExec`] name it.
    pub id: u32,
    /// The stage whose tasks summarise the build-side keys.
    pub build_stage: u32,
    /// The stage whose tasks filter the probe side.
    pub probe_stage: u32,
}

/// True for join types whose output does not depend on probe rows without a match, so
/// dropping those rows early changes nothing (the probe side is the right input).
fn drops_unmatched_probe_rows(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Inner
            | JoinType::Left
            | JoinType::LeftSemi
            | JoinType::LeftAnti
            | JoinType::RightSemi
    )
}

/// Key types whose values order and compare the way the join matches them (no NaN, no
/// nested values).
fn filterable(data_type: &DataType) -> bool {
    data_type.is_integer()
        || matches!(
            data_type,
            DataType::Decimal32(..)
                | DataType::Decimal64(..)
                | DataType::Decimal128(..)
                | DataType::Decimal256(..)
                | DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(..)
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
        )
}

/// Puts a [`KeySummaryExec`] / [`ProbeFilterExec`] pair into every hash join of `plan`
/// that a filter from its build side is valid for and whose build side will be a stage
/// of its own: a `Partitioned` join's hash-repartitioned build side, or a `CollectLeft`
/// join's coalesced one. Runs before the plan is cut.
pub fn insert(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let mut next_id = 0;
    Ok(plan
        .transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            if !drops_unmatched_probe_rows(*join.join_type())
                || join.null_aware
                || join.null_equality() != NullEquality::NullEqualsNothing
            {
                return Ok(Transformed::no(node));
            }
            let (left, right) = (join.left(), join.right());
            let (build_keys, probe_keys): (Vec<Arc<dyn PhysicalExpr>>, Vec<_>) =
                join.on().iter().cloned().unzip();
            let same_filterable_types = build_keys.iter().zip(&probe_keys).all(|(b, p)| {
                match (b.data_type(&left.schema()), p.data_type(&right.schema())) {
                    (Ok(b), Ok(p)) => b == p && filterable(&b),
                    _ => false,
                }
            });
            if !same_filterable_types {
                return Ok(Transformed::no(node));
            }
            let Some(build_input) = exchange_input(left, *join.partition_mode()) else {
                return Ok(Transformed::no(node));
            };
            let id = next_id;
            next_id += 1;
            let summary = Arc::new(KeySummaryExec::new(
                id,
                build_keys,
                MAX_FILTER_VALUES,
                build_input.clone(),
            ));
            let left = replace_children_if_necessary(left.clone(), vec![summary])?;
            let right = match hash_exchange_input(right) {
                Some(probe_input) => replace_children_if_necessary(
                    right.clone(),
                    vec![Arc::new(ProbeFilterExec::new(id, probe_keys, probe_input))],
                )?,
                // Right under the join, which drops the rows a filter would: measured
                // on TPC-H SF 1 star joins, filtering them there too cost 9-56 % more
                // time, so here the filter only prunes the scans.
                None => {
                    Arc::new(ProbeFilterExec::new(id, probe_keys, right.clone()).pruning_only())
                }
            };
            Ok(Transformed::yes(replace_children_if_necessary(
                node,
                vec![left, right],
            )?))
        })?
        .data)
}

/// The input of a join's build side where that side is an exchange the cut turns into
/// a stage boundary: a hash repartition under a `Partitioned` join, a coalesce of
/// several partitions under a `CollectLeft` one.
fn exchange_input(
    build: &Arc<dyn ExecutionPlan>,
    mode: PartitionMode,
) -> Option<Arc<dyn ExecutionPlan>> {
    match mode {
        PartitionMode::Partitioned => hash_exchange_input(build),
        PartitionMode::CollectLeft => build
            .downcast_ref::<CoalescePartitionsExec>()
            .map(|c| c.input().clone())
            .filter(|input| input.output_partitioning().partition_count() > 1),
        PartitionMode::Auto => None,
    }
}

fn hash_exchange_input(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    plan.downcast_ref::<RepartitionExec>()
        .filter(|r| matches!(r.partitioning(), Partitioning::Hash(..)))
        .map(|r| r.input().clone())
}

/// Where each filter's halves are, from the stage plans (indexed by stage id).
pub fn links(stages: &[Arc<dyn ExecutionPlan>]) -> Result<Vec<FilterLink>> {
    let mut builds = Vec::new();
    let mut probes = Vec::new();
    for (sid, plan) in stages.iter().enumerate() {
        plan.apply(|node| {
            if let Some(summary) = node.downcast_ref::<KeySummaryExec>() {
                builds.push((summary.filter_id(), sid as u32));
            }
            if let Some(probe) = node.downcast_ref::<ProbeFilterExec>() {
                probes.push((probe.filter_id(), sid as u32));
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
    }
    Ok(builds
        .into_iter()
        .filter_map(|(id, build_stage)| {
            let (_, probe_stage) = probes.iter().find(|(p, _)| *p == id)?;
            Some(FilterLink {
                id,
                build_stage,
                probe_stage: *probe_stage,
            })
        })
        .collect())
}

/// The filters worth keeping. A probe stage that reads the build stage already waits
/// for it, so its filter costs no wait; another probe stage must wait, which pays only
/// when the build stage is cheap next to it ([`WAIT_COST_SHARE`] of its estimated cost,
/// `costs` by stage id) and cannot wait on itself. With `enabled` false, none is kept.
pub fn choose(
    links: &[FilterLink],
    inputs: &[Vec<u32>],
    costs: &[f64],
    enabled: bool,
) -> Vec<FilterLink> {
    let mut kept: Vec<FilterLink> = Vec::new();
    if !enabled {
        return kept;
    }
    for link in links {
        let (build, probe) = (link.build_stage as usize, link.probe_stage as usize);
        let reads_build = inputs[probe].contains(&link.build_stage);
        let pays = costs[build] <= WAIT_COST_SHARE * costs[probe];
        if reads_build || (pays && !depends_on(link.build_stage, link.probe_stage, inputs, &kept)) {
            kept.push(*link);
        }
    }
    kept
}

/// True when stage `stage` reads or waits for `on`, directly or not.
fn depends_on(stage: u32, on: u32, inputs: &[Vec<u32>], waits: &[FilterLink]) -> bool {
    let mut stack = vec![stage];
    let mut seen = vec![false; inputs.len()];
    while let Some(s) = stack.pop() {
        if s == on {
            return true;
        }
        if std::mem::replace(&mut seen[s as usize], true) {
            continue;
        }
        stack.extend(inputs[s as usize].iter().copied());
        stack.extend(
            waits
                .iter()
                .filter(|l| l.probe_stage == s)
                .map(|l| l.build_stage),
        );
    }
    false
}

/// Takes the halves of every filter not in `kept` out of `plan`.
pub fn strip_unkept(
    plan: Arc<dyn ExecutionPlan>,
    kept: &[FilterLink],
) -> Result<Arc<dyn ExecutionPlan>> {
    let is_kept = |id: u32| kept.iter().any(|l| l.id == id);
    Ok(plan
        .transform_up(|node| {
            let id = node
                .downcast_ref::<KeySummaryExec>()
                .map(|s| s.filter_id())
                .or_else(|| {
                    node.downcast_ref::<ProbeFilterExec>()
                        .map(|p| p.filter_id())
                });
            match id {
                Some(id) if !is_kept(id) => Ok(Transformed::yes(node.children()[0].clone())),
                _ => Ok(Transformed::no(node)),
            }
        })?
        .data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(id: u32, build_stage: u32, probe_stage: u32) -> FilterLink {
        FilterLink {
            id,
            build_stage,
            probe_stage,
        }
    }

    #[test]
    fn a_probe_stage_waits_only_for_a_build_stage_that_is_cheap_next_to_it() {
        // Stage 2 joins stage 0 (build) and stage 1 (probe).
        let inputs = vec![vec![], vec![], vec![0, 1]];
        let cheap_build = [10.0, 100.0, 5.0];
        let dear_build = [80.0, 100.0, 5.0];
        let across = [link(0, 0, 1)];
        assert_eq!(choose(&across, &inputs, &cheap_build, true), across);
        assert!(choose(&across, &inputs, &dear_build, true).is_empty());
        assert!(choose(&across, &inputs, &cheap_build, false).is_empty());
        // A probe filter in the join's own stage costs no wait: always kept.
        let within = [link(0, 0, 2)];
        assert_eq!(choose(&within, &inputs, &dear_build, true), within);
    }

    #[test]
    fn a_filter_that_would_make_a_stage_wait_on_itself_is_not_kept() {
        // Stage 1 reads stage 0: stage 0 waiting for stage 1 would never start.
        let inputs = vec![vec![], vec![0]];
        let costs = [100.0, 1.0];
        assert!(choose(&[link(0, 1, 0)], &inputs, &costs, true).is_empty());
    }
}
