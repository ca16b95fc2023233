//! Planning join filters: which joins get one, where its halves go, and which are kept
//! once the plan is cut into stages.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinType, NullEquality};
use datafusion::error::Result;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{Partitioning, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, StatisticsArgs, StatisticsContext,
};

use super::{KeySummaryExec, MAX_FILTER_VALUES, ProbeFilterExec};
use crate::planner::gathers_a_stage;

/// A probe stage waits for its build stage only when the build stage is estimated to
/// cost at most this share of the stages the filter cuts: the wait is then short
/// against the work the filter may save.
pub const WAIT_COST_SHARE: f64 = 0.5;

/// A `CollectLeft` build side inside the join's stage becomes a stage of its own, to
/// filter a scan in an earlier stage, only when estimated at most this many rows.
pub const MAX_STAGED_BUILD_ROWS: usize = 100_000;

/// Where the halves of one join filter are after cutting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLink {
    /// The filter's id, as its [`KeySummaryExec`] and [`ProbeFilterExec`] name it.
    pub id: u32,
    /// The stage whose tasks summarise the keys: the join's build side (for a reverse
    /// filter, its probe side).
    pub build_stage: u32,
    /// The stage whose tasks filter rows by those keys: the join's probe side (for a
    /// reverse filter, its build side).
    pub probe_stage: u32,
    /// True for a reverse filter: the probe side's keys filter the build side.
    pub reverse: bool,
}

/// A plan with join filters put in, as [`insert`] returns it.
pub struct Inserted {
    /// The plan.
    pub plan: Arc<dyn ExecutionPlan>,
    /// The filter ids whose build side was made a stage of its own.
    pub staged: Vec<u32>,
    /// The ids of reverse filters.
    pub reverse: Vec<u32>,
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

/// True for join types whose output keeps no build row without a match (the build side
/// is the left input) but may keep probe rows without one, so a filter can only go the
/// other way: the probe side's keys drop the build rows that cannot match. Joins that
/// drop both kinds of rows take the usual direction, from the (smaller) build side.
fn drops_only_unmatched_build_rows(join_type: JoinType) -> bool {
    matches!(join_type, JoinType::Right | JoinType::RightAnti)
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
/// join's coalesced one; or a build side inside the join's stage ([`BuildStage`]: a
/// small one-partition one, or a filter over input partitioned on the keys) whose keys
/// can filter a scan in an earlier stage, which then becomes a stage of its own, except
/// for the filter ids in `keep_in_stage`. A `Partitioned` right outer or
/// right anti join, which keeps unmatched probe rows, gets a reverse filter instead:
/// its probe side's keys filter its build side. Runs before the plan is cut.
/// Returns the plan, the ids of the filters whose build side it made a stage of, and
/// those of the reverse filters.
///
/// Ids are given in the order of a bottom-up walk, the same for the same plan whatever
/// `keep_in_stage` says, so a second call can keep the build sides of the first call's
/// unused filters in their stages.
pub fn insert(plan: Arc<dyn ExecutionPlan>, keep_in_stage: &[u32]) -> Result<Inserted> {
    let mut next_id = 0;
    let mut staged = Vec::new();
    let mut reverse_ids = Vec::new();
    let plan = plan
        .transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            let forward = drops_unmatched_probe_rows(*join.join_type());
            let reverse = drops_only_unmatched_build_rows(*join.join_type());
            if !(forward || reverse)
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
            let id = next_id;
            if reverse {
                let (Some(build_input), Some(probe_input)) = (
                    (*join.partition_mode() == PartitionMode::Partitioned)
                        .then(|| hash_exchange_input(left))
                        .flatten(),
                    hash_exchange_input(right),
                ) else {
                    return Ok(Transformed::no(node));
                };
                next_id += 1;
                reverse_ids.push(id);
                let summary = KeySummaryExec::new(id, probe_keys, MAX_FILTER_VALUES, probe_input)
                    .with_bloom(true);
                let probe = ProbeFilterExec::new(id, build_keys, build_input);
                let left = replace_children_if_necessary(left.clone(), vec![Arc::new(probe)])?;
                let right = replace_children_if_necessary(right.clone(), vec![Arc::new(summary)])?;
                return Ok(Transformed::yes(replace_children_if_necessary(
                    node,
                    vec![left, right],
                )?));
            }
            let deep = || below_an_exchange(right, &probe_keys, id);
            let (left, right) = match exchange_input(left, *join.partition_mode()) {
                Some(build_input) => {
                    let (right, filters_rows) = match hash_exchange_input(right) {
                        Some(probe_input) => {
                            let probe = ProbeFilterExec::new(id, probe_keys, probe_input);
                            let probe: Arc<dyn ExecutionPlan> = Arc::new(probe);
                            (
                                replace_children_if_necessary(right.clone(), vec![probe])?,
                                true,
                            )
                        }
                        None => match deep()? {
                            Some(right) => (right, true),
                            // Right under the join, which drops the rows a filter would:
                            // measured on TPC-H SF 1 star joins, filtering them there too
                            // cost 9-56 % more time, so here the filter only prunes the
                            // scans.
                            None => {
                                let probe = ProbeFilterExec::new(id, probe_keys, right.clone());
                                (Arc::new(probe.pruning_only()) as _, false)
                            }
                        },
                    };
                    // Only a probe that filters rows uses a Bloom filter.
                    let summary =
                        KeySummaryExec::new(id, build_keys, MAX_FILTER_VALUES, build_input)
                            .with_bloom(filters_rows);
                    let left =
                        replace_children_if_necessary(left.clone(), vec![Arc::new(summary)])?;
                    (left, right)
                }
                // A build side inside the join's stage whose keys can filter a scan in
                // an earlier stage becomes a stage of its own, so its keys are known
                // before that scan runs (see [`BuildStage`]).
                None => {
                    let Some(stage) = BuildStage::of(left, *join.partition_mode(), &build_keys)
                    else {
                        return Ok(Transformed::no(node));
                    };
                    match deep()? {
                        Some(_) if keep_in_stage.contains(&id) => {
                            next_id += 1;
                            return Ok(Transformed::no(node));
                        }
                        Some(right) => {
                            staged.push(id);
                            let summary = KeySummaryExec::new(
                                id,
                                build_keys,
                                MAX_FILTER_VALUES,
                                left.clone(),
                            )
                            .with_bloom(true);
                            (stage.over(Arc::new(summary))?, right)
                        }
                        None => return Ok(Transformed::no(node)),
                    }
                }
            };
            next_id += 1;
            Ok(Transformed::yes(replace_children_if_necessary(
                node,
                vec![left, right],
            )?))
        })?
        .data;
    Ok(Inserted {
        plan,
        staged,
        reverse: reverse_ids,
    })
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

/// How a build side inside its join's stage becomes a stage of its own.
enum BuildStage {
    /// A `CollectLeft` join's one-partition build side (no exchange) estimated at most
    /// [`MAX_STAGED_BUILD_ROWS`] rows: gathered.
    Gathered,
    /// A `Partitioned` join's build side that is a filter over input hash-partitioned
    /// on the join keys (a HAVING over the aggregate the join reads), which may keep
    /// few of its keys though no estimate tells: shuffled as it is partitioned, so
    /// every row stays in its partition.
    Shuffled(Partitioning),
}

impl BuildStage {
    /// How `build`, the build side of a join in `mode` on `keys`, becomes a stage;
    /// `None` when it does not.
    fn of(
        build: &Arc<dyn ExecutionPlan>,
        mode: PartitionMode,
        keys: &[Arc<dyn PhysicalExpr>],
    ) -> Option<Self> {
        let partitioning = build.output_partitioning();
        match mode {
            PartitionMode::CollectLeft
                if partitioning.partition_count() == 1
                    && StatisticsContext::new()
                        .compute(build.as_ref(), &StatisticsArgs::new())
                        .ok()
                        .and_then(|s| s.num_rows.get_value().copied())
                        .is_some_and(|rows| rows <= MAX_STAGED_BUILD_ROWS) =>
            {
                Some(Self::Gathered)
            }
            PartitionMode::Partitioned if build.is::<FilterExec>() => match partitioning {
                Partitioning::Hash(exprs, n)
                    if *n > 1
                        && exprs.len() == keys.len()
                        && exprs
                            .iter()
                            .zip(keys)
                            .all(|(a, b)| a.as_ref() == b.as_ref()) =>
                {
                    Some(Self::Shuffled(partitioning.clone()))
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// `summary` (over the build side) under the exchange that makes it a stage.
    fn over(self, summary: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(match self {
            Self::Gathered => Arc::new(CoalescePartitionsExec::new(summary)),
            Self::Shuffled(partitioning) => {
                Arc::new(RepartitionExec::try_new(summary, partitioning)?)
            }
        })
    }
}

/// `probe` with a row-filtering [`ProbeFilterExec`] for filter `id` placed as deep as
/// the join keys `keys` (columns of `probe`'s output) can be followed unchanged, when
/// that place is past an exchange, so in an earlier stage than the join; `None` when the
/// keys are not plain columns or cannot be followed past one.
///
/// Rows whose keys the build side lacks are dropped by the join whatever happened to
/// them on the way, and an operator on the way changes no other row for their loss:
/// they are filtered, projected, moved or sorted row by row, and in a join every output
/// row made from one of them carries its key (dropped too) or, where its partner went
/// unmatched, a null key (which the join matches to nothing). Limits, aggregates and
/// anything else end the way.
fn below_an_exchange(
    probe: &Arc<dyn ExecutionPlan>,
    keys: &[Arc<dyn PhysicalExpr>],
    id: u32,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let columns: Option<Vec<usize>> = keys
        .iter()
        .map(|k| k.downcast_ref::<Column>().map(Column::index))
        .collect();
    match columns {
        Some(columns) => place_deep(probe, &columns, false, id),
        None => Ok(None),
    }
}

/// One step of [`below_an_exchange`]: `columns` index `node`'s output, and `crossed`
/// says an exchange lies between the join and `node`.
fn place_deep(
    node: &Arc<dyn ExecutionPlan>,
    columns: &[usize],
    crossed: bool,
    id: u32,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if let Some((child, child_columns)) = follow(node, columns) {
        let crossed = crossed || is_exchange(node);
        if let Some(placed) = place_deep(node.children()[child], &child_columns, crossed, id)? {
            let mut children: Vec<_> = node.children().into_iter().cloned().collect();
            children[child] = placed;
            return Ok(Some(replace_children_if_necessary(node.clone(), children)?));
        }
    }
    if !crossed {
        return Ok(None);
    }
    let schema = node.schema();
    let keys = columns
        .iter()
        .map(|&i| Arc::new(Column::new(schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>)
        .collect();
    Ok(Some(Arc::new(ProbeFilterExec::new(id, keys, node.clone()))))
}

/// True for a node the cut turns into a stage boundary (`crate::planner::plan_stages`):
/// a hash repartition, a gather of several partitions, or a gather of a build side this
/// rule made a stage of.
fn is_exchange(node: &Arc<dyn ExecutionPlan>) -> bool {
    let gathered = node
        .children()
        .first()
        .map(|c| c.output_partitioning().partition_count());
    hash_exchange_input(node).is_some()
        || gathered.is_some_and(|partitions| gathers_a_stage(node, partitions))
}

/// The child of `node` (by position) that output `columns` come from unchanged, and
/// their indices there; `None` where a filter cannot pass `node`.
fn follow(node: &Arc<dyn ExecutionPlan>, columns: &[usize]) -> Option<(usize, Vec<usize>)> {
    if node.fetch().is_some() {
        return None;
    }
    let same = || Some((0, columns.to_vec()));
    if node.is::<RepartitionExec>()
        || node.is::<CoalescePartitionsExec>()
        || node.is::<SortPreservingMergeExec>()
        || node.is::<SortExec>()
        || node.is::<KeySummaryExec>()
        || node.is::<ProbeFilterExec>()
    {
        return same();
    }
    if let Some(filter) = node.downcast_ref::<FilterExec>() {
        return match filter.projection() {
            Some(p) => columns
                .iter()
                .map(|&i| p.get(i).copied())
                .collect::<Option<_>>(),
            None => Some(columns.to_vec()),
        }
        .map(|c| (0, c));
    }
    if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
        let exprs = projection.expr();
        return columns
            .iter()
            .map(|&i| {
                exprs
                    .get(i)?
                    .expr
                    .downcast_ref::<Column>()
                    .map(Column::index)
            })
            .collect::<Option<Vec<_>>>()
            .map(|c| (0, c));
    }
    let join = node.downcast_ref::<HashJoinExec>()?;
    let left_width = join.left().schema().fields().len();
    let right_width = join.right().schema().fields().len();
    let sides: Option<Vec<(usize, usize)>> = columns
        .iter()
        .map(|&i| {
            let i = match &join.projection {
                Some(p) => *p.get(i)?,
                None => i,
            };
            match join.join_type() {
                JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                    Some(if i < left_width {
                        (0, i)
                    } else {
                        (1, i - left_width)
                    })
                }
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                    (i < left_width).then_some((0, i))
                }
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                    (i < right_width).then_some((1, i))
                }
            }
        })
        .collect();
    let sides = sides?;
    let side = sides.first()?.0;
    sides
        .iter()
        .all(|(s, _)| *s == side)
        .then(|| (side, sides.iter().map(|(_, i)| *i).collect()))
}

fn hash_exchange_input(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    plan.downcast_ref::<RepartitionExec>()
        .filter(|r| matches!(r.partitioning(), Partitioning::Hash(..)))
        .map(|r| r.input().clone())
}

/// Where each filter's halves are, from the stage plans (indexed by stage id);
/// `reverse` names the reverse filters.
pub fn links(stages: &[Arc<dyn ExecutionPlan>], reverse: &[u32]) -> Result<Vec<FilterLink>> {
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
                reverse: reverse.contains(&id),
            })
        })
        .collect())
}

/// The filters worth keeping. A probe stage that reads the build stage already waits
/// for it, so its filter costs no wait; another probe stage must wait, which pays only
/// when the build stage is cheap next to the work the filter cuts ([`WAIT_COST_SHARE`]
/// of the estimated cost of the probe stage and the stages between it and the join,
/// `costs` by stage id; a reverse filter weighs the shorter of the two stages against
/// those and its join's stage), or when the build stage has a task for every slot of
/// the cluster (`fills_cluster` by stage id), and cannot wait on itself.
pub fn choose(
    links: &[FilterLink],
    inputs: &[Vec<u32>],
    costs: &[f64],
    fills_cluster: &[bool],
) -> Vec<FilterLink> {
    let mut kept: Vec<FilterLink> = Vec::new();
    for link in links {
        let (build, probe) = (link.build_stage as usize, link.probe_stage as usize);
        let reads_build = inputs[probe].contains(&link.build_stage);
        // A reverse filter's summarising stage feeds the join's stage, which waits for
        // it anyway: the wait delays the join by at most the filtered stage's own run.
        let wait = match link.reverse {
            true => costs[build].min(costs[probe]),
            false => costs[build],
        };
        // A build stage with a task for every slot leaves the probe stage no room to
        // run beside it but its last wave's: waiting for it costs next to nothing.
        let pays =
            wait <= WAIT_COST_SHARE * filtered_cost(link, inputs, costs) || fills_cluster[build];
        if reads_build || (pays && !depends_on(link.build_stage, link.probe_stage, inputs, &kept)) {
            kept.push(*link);
        }
    }
    kept
}

/// The estimated cost of the stages whose rows a filter cuts before its join: the probe
/// stage and, when it is further down than the join's inputs, every stage between it
/// and the join's stage (a stage that reads the build stage). Counting the join's stage
/// too kept more filters and measured no faster on TPC-H SF 1 (5.20 and 5.30 s against
/// 5.38 and 5.12 s, alternating runs; Q20 and Q21 slower), except for a reverse filter.
fn filtered_cost(link: &FilterLink, inputs: &[Vec<u32>], costs: &[f64]) -> f64 {
    let joins: Vec<u32> = (0..inputs.len() as u32)
        .filter(|&s| inputs[s as usize].contains(&link.build_stage))
        .collect();
    let between = (0..inputs.len() as u32).filter(|&s| {
        s != link.probe_stage
            && !joins.contains(&s)
            && depends_on(s, link.probe_stage, inputs, &[])
            && joins.iter().any(|&j| depends_on(j, s, inputs, &[]))
    });
    // A reverse filter cuts the rows the join's stage builds its hash table of, the
    // bulk of that stage's work (Q21's anti join: 0.6 of its 0.7 task-seconds).
    let builds = joins
        .iter()
        .filter(|_| link.reverse)
        .map(|&j| costs[j as usize])
        .sum::<f64>();
    costs[link.probe_stage as usize] + between.map(|s| costs[s as usize]).sum::<f64>() + builds
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
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::physical_plan::displayable;

    use super::*;

    fn link(id: u32, build_stage: u32, probe_stage: u32) -> FilterLink {
        FilterLink {
            reverse: false,
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
        let idle = [false; 3];
        assert_eq!(choose(&across, &inputs, &cheap_build, &idle), across);
        assert!(choose(&across, &inputs, &dear_build, &idle).is_empty());
        // A build stage that fills every slot leaves the probe stage nothing to overlap.
        let filling = [true, false, false];
        assert_eq!(choose(&across, &inputs, &dear_build, &filling), across);
        // A probe filter in the join's own stage costs no wait: always kept.
        let within = [link(0, 0, 2)];
        assert_eq!(choose(&within, &inputs, &dear_build, &idle), within);
    }

    #[test]
    fn a_filter_below_the_joins_inputs_pays_for_the_stages_it_cuts() {
        // Stage 3 joins stage 0 (build) with stage 2, which reads the probe stage 1.
        let inputs = vec![vec![], vec![], vec![1], vec![0, 2]];
        let deep = [link(0, 0, 1)];
        // The probe stage alone is cheap next to the build, the stage after it is not.
        let kept = |costs: [f64; 4]| !choose(&deep, &inputs, &costs, &[false; 4]).is_empty();
        assert!(kept([5.0, 6.0, 1000.0, 1.0]));
        assert!(!kept([5.0, 6.0, 1.0, 1000.0]));
    }

    #[test]
    fn a_reverse_filter_pays_for_the_hash_table_its_join_builds() {
        // Stage 2 joins stage 0 (build, filtered) with stage 1 (probe, summarised). The
        // join waits for stage 1 anyway: its cost is no wait.
        let inputs = vec![vec![], vec![], vec![0, 1]];
        let costs = [10.0, 100.0, 20.0];
        let forward = link(0, 1, 0);
        let reverse = FilterLink {
            reverse: true,
            ..forward
        };
        assert!(choose(&[forward], &inputs, &costs, &[false; 3]).is_empty());
        assert_eq!(
            choose(&[reverse], &inputs, &costs, &[false; 3]),
            vec![reverse]
        );
    }

    /// Facts `x, k` joined (partitioned, on `x = y`) with `y`.
    fn partitioned_facts() -> Arc<dyn ExecutionPlan> {
        join(
            hash(scan(&["x", "k"], 4), "x"),
            hash(scan(&["y"], 4), "y"),
            ("x", "y"),
            JoinType::Inner,
            PartitionMode::Partitioned,
        )
    }

    /// Stage `sid`'s plan as text.
    fn stage_text(dag: &crate::planner::StageDag, sid: u32) -> String {
        displayable(dag.stages[sid as usize].plan.as_ref())
            .indent(false)
            .to_string()
    }

    /// The filter whose summarising stage shows `keys` (e.g. "keys=[d@0]").
    fn summarising(dag: &crate::planner::StageDag, keys: &str) -> FilterLink {
        *dag.filters
            .iter()
            .find(|l| stage_text(dag, l.build_stage).contains(keys))
            .unwrap_or_else(|| panic!("{}", dag.display()))
    }

    /// The probe half of filter `id` in `plan`.
    fn probe_of(plan: &Arc<dyn ExecutionPlan>, id: u32) -> Option<Arc<dyn ExecutionPlan>> {
        let mut found = None;
        plan.apply(|node| {
            if node
                .downcast_ref::<ProbeFilterExec>()
                .is_some_and(|p| p.filter_id() == id)
            {
                found = Some(node.clone());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        found
    }

    /// A scan of `partitions` partitions of one Int64 column per name in `columns`.
    fn scan(columns: &[&str], partitions: usize) -> Arc<dyn ExecutionPlan> {
        use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
        use datafusion::arrow::datatypes::{Field, Schema};
        use datafusion::datasource::memory::MemorySourceConfig;
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(*c, DataType::Int64, true))
                .collect::<Vec<_>>(),
        ));
        let batch = |p: i64| {
            let arrays = columns
                .iter()
                .map(|_| Arc::new(Int64Array::from(vec![p, p + 1])) as ArrayRef)
                .collect();
            vec![RecordBatch::try_new(schema.clone(), arrays).unwrap()]
        };
        let batches: Vec<_> = (0..partitions as i64).map(batch).collect();
        MemorySourceConfig::try_new_exec(&batches, schema, None).unwrap()
    }

    fn col(name: &str, plan: &Arc<dyn ExecutionPlan>) -> Arc<dyn PhysicalExpr> {
        datafusion::physical_expr::expressions::col(name, &plan.schema()).unwrap()
    }

    fn hash(plan: Arc<dyn ExecutionPlan>, key: &str) -> Arc<dyn ExecutionPlan> {
        let partitioning = Partitioning::Hash(vec![col(key, &plan)], 4);
        Arc::new(RepartitionExec::try_new(plan, partitioning).unwrap())
    }

    fn join(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        (l, r): (&str, &str),
        join_type: JoinType,
        mode: PartitionMode,
    ) -> Arc<dyn ExecutionPlan> {
        let on = vec![(col(l, &left), col(r, &right))];
        Arc::new(
            HashJoinExec::try_new(
                left,
                right,
                on,
                None,
                &join_type,
                None,
                mode,
                NullEquality::NullEqualsNothing,
                false,
            )
            .unwrap(),
        )
    }

    /// An inner `CollectLeft` join of `dimension` (the build side) with `probe`.
    fn broadcast(
        dimension: Arc<dyn ExecutionPlan>,
        probe: Arc<dyn ExecutionPlan>,
        on: (&str, &str),
    ) -> Arc<dyn ExecutionPlan> {
        join(
            dimension,
            probe,
            on,
            JoinType::Inner,
            PartitionMode::CollectLeft,
        )
    }

    /// `dim` (one partition, in the join's stage) joined on `d = k` with the partitioned
    /// join of `fact` (four partitions, columns `x`, `k`) and `other` (column `y`).
    fn snowflake(fact_side: JoinType) -> Arc<dyn ExecutionPlan> {
        let facts = join(
            hash(scan(&["x", "k"], 4), "x"),
            hash(scan(&["y"], 4), "y"),
            ("x", "y"),
            fact_side,
            PartitionMode::Partitioned,
        );
        broadcast(scan(&["d"], 1), facts, ("d", "k"))
    }

    /// `plan` cut, and the filters whose build side is the one-partition `d` scan.
    fn cut_filters(plan: Arc<dyn ExecutionPlan>) -> (crate::planner::StageDag, Vec<FilterLink>) {
        let dag = crate::planner::plan_stages(plan, 0, Some(&[])).unwrap();
        let links = dag
            .filters
            .iter()
            .filter(|l| stage_text(&dag, l.build_stage).contains("keys=[d@0]"))
            .copied()
            .collect();
        (dag, links)
    }

    #[test]
    fn a_small_build_side_in_the_joins_stage_filters_a_scan_stages_earlier() {
        for fact_side in [JoinType::Inner, JoinType::Left, JoinType::Full] {
            let (dag, links) = cut_filters(snowflake(fact_side));
            let [link] = links[..] else {
                panic!("{fact_side}: {links:?}\n{}", dag.display());
            };
            // The build side is a stage of one task, read by the join's stage only.
            let build = &dag.stages[link.build_stage as usize];
            assert_eq!(build.tasks, 1);
            let join_stage = dag.final_stage().id;
            assert_eq!(dag.consumers(link.build_stage), vec![join_stage]);
            // The filter went past the join's exchange to the fact scan, and filters rows.
            let probe_stage = &dag.stages[link.probe_stage as usize];
            assert_ne!(link.probe_stage, join_stage);
            let probe = probe_of(&probe_stage.plan, link.id).unwrap();
            let probe_filter = probe.downcast_ref::<ProbeFilterExec>().unwrap();
            assert!(!probe_filter.is_pruning_only());
            assert!(probe.children()[0].is::<DataSourceExec>());
            assert_eq!(probe_filter.keys()[0].to_string(), "k@1");
        }
    }

    #[test]
    fn a_deep_filter_follows_its_key_to_its_own_side_and_needs_an_exchange() {
        // Through a right semi join only the right side's columns are in the output.
        let semi = join(
            scan(&["d"], 1),
            join(
                hash(scan(&["x", "k"], 4), "x"),
                hash(scan(&["y", "k"], 4), "y"),
                ("x", "y"),
                JoinType::RightSemi,
                PartitionMode::Partitioned,
            ),
            ("d", "k"),
            JoinType::Inner,
            PartitionMode::CollectLeft,
        );
        let (dag, links) = cut_filters(semi);
        let [link] = links[..] else {
            panic!("{links:?}\n{}", dag.display());
        };
        let probe = probe_of(&dag.stages[link.probe_stage as usize].plan, link.id).unwrap();
        assert_eq!(probe.schema().field(0).name(), "y", "{}", dag.display());
        // A probe scan in the join's own stage: no stage is made for the build side.
        let local = broadcast(scan(&["d"], 1), scan(&["x", "k"], 4), ("d", "k"));
        let (dag, links) = cut_filters(local);
        assert!(links.is_empty(), "{}", dag.display());
        assert_eq!(dag.stages.len(), 1, "{}", dag.display());
    }

    #[test]
    fn a_dimension_of_a_dimension_filters_the_dimension_staged_for_the_fact() {
        // `r` joins on `nr`, a column of the one-partition `n` side, which itself joins
        // the facts on `n = k` and was made a stage for that.
        let facts = partitioned_facts();
        let dimension = broadcast(scan(&["n", "nr"], 1), facts, ("n", "k"));
        let plan = broadcast(scan(&["r"], 1), dimension, ("r", "nr"));
        let dag = crate::planner::plan_stages(plan, 0, Some(&[])).unwrap();
        let text = |sid: u32| stage_text(&dag, sid);
        let link = summarising(&dag, "keys=[r@0]");
        assert!(
            text(link.probe_stage).contains("keys=[n@0]"),
            "{}",
            dag.display()
        );
        let probe = probe_of(&dag.stages[link.probe_stage as usize].plan, link.id).unwrap();
        assert!(
            probe.children()[0].is::<DataSourceExec>(),
            "{}",
            dag.display()
        );
    }

    #[test]
    fn a_staged_build_side_asked_to_stay_in_its_stage_does() {
        let staged = crate::planner::plan_stages(snowflake(JoinType::Inner), 0, Some(&[])).unwrap();
        let [id] = staged.staged_builds[..] else {
            panic!("{:?}", staged.staged_builds);
        };
        let kept_in = crate::planner::plan_stages(snowflake(JoinType::Inner), 0, Some(&[id]));
        let kept_in = kept_in.unwrap();
        assert!(kept_in.staged_builds.is_empty());
        assert_eq!(kept_in.stages.len(), staged.stages.len() - 1);
        // The other filters keep their ids.
        let ids = |dag: &crate::planner::StageDag| {
            dag.filters
                .iter()
                .map(|l| l.id)
                .filter(|i| *i != id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&kept_in), ids(&staged));
        assert!(!ids(&staged).is_empty());
    }

    #[test]
    fn a_right_anti_join_filters_its_build_side_by_its_probe_keys() {
        // The build side ("b", big) loses the rows no probe key ("p") matches: they
        // could only have removed probe rows from the output.
        for join_type in [JoinType::RightAnti, JoinType::Right] {
            let anti = join(
                hash(scan(&["b"], 4), "b"),
                hash(scan(&["p"], 4), "p"),
                ("b", "p"),
                join_type,
                PartitionMode::Partitioned,
            );
            let dag = crate::planner::plan_stages(anti, 0, Some(&[])).unwrap();
            let [link] = dag.filters[..] else {
                panic!("{:?}\n{}", dag.filters, dag.display());
            };
            assert!(
                stage_text(&dag, link.build_stage).contains("keys=[p@0]"),
                "{}",
                dag.display()
            );
            let probe = probe_of(&dag.stages[link.probe_stage as usize].plan, link.id).unwrap();
            assert_eq!(probe.schema().field(0).name(), "b", "{}", dag.display());
        }
        // A left anti join keeps its unmatched build rows but drops the probe rows the
        // build side matches nothing to: its filter goes the usual way.
        let left_anti = join(
            hash(scan(&["b"], 4), "b"),
            hash(scan(&["p"], 4), "p"),
            ("b", "p"),
            JoinType::LeftAnti,
            PartitionMode::Partitioned,
        );
        let dag = crate::planner::plan_stages(left_anti, 0, Some(&[])).unwrap();
        let [link] = dag.filters[..] else {
            panic!("{:?}\n{}", dag.filters, dag.display());
        };
        let probe = probe_of(&dag.stages[link.probe_stage as usize].plan, link.id).unwrap();
        assert_eq!(probe.schema().field(0).name(), "p", "{}", dag.display());
    }

    #[test]
    fn a_filtered_partitioned_build_side_becomes_a_stage_whose_keys_go_deep() {
        use datafusion::logical_expr::Operator;
        use datafusion::physical_expr::expressions::{BinaryExpr, lit};
        // The build side filters rows inside the join's stage (a HAVING, say), over
        // input hash-partitioned on its key `d`; the key reaches the `x` scan below the
        // facts' join.
        let partitioned = hash(scan(&["d"], 4), "d");
        let having = Arc::new(BinaryExpr::new(
            col("d", &partitioned),
            Operator::Gt,
            lit(1_i64),
        ));
        let build = Arc::new(FilterExec::try_new(having, partitioned).unwrap());
        let facts = partitioned_facts();
        let plan = join(
            build,
            facts,
            ("d", "x"),
            JoinType::RightSemi,
            PartitionMode::Partitioned,
        );
        let dag = crate::planner::plan_stages(plan.clone(), 0, Some(&[])).unwrap();
        let text = |sid: u32| stage_text(&dag, sid);
        let link = summarising(&dag, "keys=[d@0]");
        assert_eq!(dag.staged_builds, vec![link.id], "{}", dag.display());
        // The filter runs in the build's own stage, shuffled on its key as before.
        assert!(
            text(link.build_stage).contains("FilterExec"),
            "{}",
            dag.display()
        );
        let probe = probe_of(&dag.stages[link.probe_stage as usize].plan, link.id).unwrap();
        assert_eq!(probe.schema().field(0).name(), "x", "{}", dag.display());
        // Kept in its stage when asked: one stage fewer, and no such filter.
        let kept = crate::planner::plan_stages(plan, 0, Some(&[link.id])).unwrap();
        assert_eq!(
            kept.stages.len() + 1,
            dag.stages.len(),
            "{}",
            kept.display()
        );
        assert!(kept.filters.iter().all(|l| l.id != link.id));
    }

    #[test]
    fn a_deep_filter_stops_at_a_limit() {
        // Rows filtered out below a limit would let others through it.
        let limited = CoalescePartitionsExec::new(scan(&["x", "k"], 4)).with_fetch(Some(3));
        let limited = Arc::new(limited);
        let plan = broadcast(scan(&["d"], 1), limited, ("d", "k"));
        let (dag, links) = cut_filters(plan);
        assert!(links.is_empty(), "{}", dag.display());
    }

    #[test]
    fn a_filter_that_would_make_a_stage_wait_on_itself_is_not_kept() {
        // Stage 1 reads stage 0: stage 0 waiting for stage 1 would never start.
        let inputs = vec![vec![], vec![0]];
        let costs = [100.0, 1.0];
        assert!(choose(&[link(0, 1, 0)], &inputs, &costs, &[true, true]).is_empty());
    }
}
