//! DataFusion's own dynamic filters inside one stage.
//!
//! The scheduler plans with DataFusion's dynamic filter pushdown off (a filter whose
//! producer runs in another stage would never be filled). The operators of one stage
//! and the scans beneath them run in one task, so the executor pushes those filters
//! itself, into the decoded stage plan, as the task's settings switch them on: a hash
//! join's build side, a TopK's heap (`ORDER BY … LIMIT`) and a MIN/MAX aggregate then
//! prune the row groups, pages and files of the scans beneath them, as on one node.
//!
//! Such a task runs a plan instance of its own, decoded for it and narrowed to its
//! partition ([`task_instance`]), for two reasons:
//! * a hash join's filter is complete only once every partition of its plan instance
//!   has built its side (for `CollectLeft`, once every probe partition has reported),
//!   and a task runs one partition: in its own instance the join has one partition;
//! * these filters tighten as their partition runs, and a second attempt of a
//!   partition in the same instance would skip the rows the first one kept (a TopK
//!   filter drops the rows tied with its k-th value, a MIN/MAX one every row that
//!   does not beat what was found).

use std::fmt;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinType, internal_err};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{Partitioning, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
use datafusion::physical_optimizer::pushdown_sort::PushdownSort;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::filter_pushdown::{FilterDescription, FilterPushdownPhase};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::limit::LocalLimitExec;
use datafusion::physical_plan::metrics::MetricValue;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sort_pushdown::SortOrderPushdownResult;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::unnest::UnnestExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};

use crate::join_filters::{KeySummaryExec, ProbeFilterExec};
use crate::planner::only_child;
use crate::proto::InStageFilterEffect;
use crate::shuffle::ShuffleWriterExec;

/// One task's own instance of the stage plan `plan` (an instance nothing ran: its
/// operators' state, a TopK's filter among it, becomes the task's): its partition
/// `partition` alone, as partition 0, with the dynamic filters `options` switch on
/// pushed into its scans.
/// A hash join's filter is left out when the join would still wait for partitions
/// other tasks run. None when no filter reaches a scan, when every switch is off, or
/// when the stage carries Baton's own join filters (whose figures are read per
/// partition of the shared plan): the task then runs the plan its stage shares.
pub fn task_instance(
    plan: &Arc<dyn ExecutionPlan>,
    partition: usize,
    options: &ConfigOptions,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let optimizer = &options.optimizer;
    let switched_on = optimizer.enable_join_dynamic_filter_pushdown
        || optimizer.enable_topk_dynamic_filter_pushdown
        || optimizer.enable_aggregate_dynamic_filter_pushdown;
    if !switched_on || plan.exists(|node| Ok(node.is::<ProbeFilterExec>()))? {
        return Ok(None);
    }
    // The sort pushdown DataFusion planned (a TopK's scan reading the row groups
    // likeliest to hold its rows first) does not survive the wire; without it the
    // filter tightens late and prunes little.
    let narrowed = PushdownSort::new().optimize(narrow(plan.clone(), partition)?, options)?;
    let narrowed = if optimizer.enable_aggregate_dynamic_filter_pushdown {
        with_aggregate_filters(narrowed)?
    } else {
        narrowed
    };
    let pushdown = FilterPushdown::new_post_optimization();
    let mut pushed = pushdown.optimize(narrowed.clone(), options)?;
    if joins_wait_for_others(&pushed)? {
        let mut without_joins = options.clone();
        without_joins.optimizer.enable_join_dynamic_filter_pushdown = false;
        pushed = pushdown.optimize(narrowed, &without_joins)?;
    }
    Ok(scans_filtered(&pushed)?.then_some(pushed))
}

/// `plan` with its MIN/MAX aggregates rebuilt, which gives them a dynamic filter again:
/// DataFusion drops an aggregate's filter at planning when nothing beneath takes it (as
/// with pushdown off), and the wire keeps it dropped.
fn with_aggregate_filters(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
            return Ok(Transformed::no(node));
        };
        let filterless = *aggregate.mode() == AggregateMode::Partial
            && aggregate.group_expr().is_empty()
            && node.dynamic_expressions_produced().is_empty();
        if !filterless {
            return Ok(Transformed::no(node));
        }
        let rebuilt = AggregateExec::try_new(
            *aggregate.mode(),
            aggregate.group_expr().clone(),
            aggregate.aggr_expr().to_vec(),
            aggregate.filter_expr().to_vec(),
            aggregate.input().clone(),
            aggregate.input_schema(),
        )?
        .with_limit_options(aggregate.limit_options());
        Ok(Transformed::yes(Arc::new(rebuilt) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}

/// True when a hash join of `plan` filters a scan beneath it but builds its filter
/// from more than one partition, which other tasks run.
fn joins_wait_for_others(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    plan.exists(|node| {
        let Some(join) = node.downcast_ref::<HashJoinExec>() else {
            return Ok(false);
        };
        let produced = join.dynamic_expressions_produced();
        let Some(id) = produced.first().and_then(|filter| filter.expression_id()) else {
            return Ok(false);
        };
        let reports = match join.partition_mode() {
            PartitionMode::CollectLeft => join.right().output_partitioning(),
            _ => join.left().output_partitioning(),
        };
        Ok(reports.partition_count() != 1 && contains_expression(join.right(), id)?)
    })
}

/// True when a hash join, a TopK or an aggregate of `plan` has a dynamic filter that an
/// operator beneath it holds (a scan: nothing else takes one).
fn scans_filtered(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    plan.exists(|node| {
        if producer_kind(node).is_none() {
            return Ok(false);
        }
        for filter in node.dynamic_expressions_produced() {
            if let Some(id) = filter.expression_id() {
                for child in node.children() {
                    if contains_expression(child, id)? {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    })
}

/// What DataFusion's dynamic filters did in `plan`, one task's own instance (see
/// [`task_instance`]) after it ran, so every partition of its scans is the task's: the
/// kinds of operator whose filter reached a scan (`join`, `topk`, `aggregate`), the
/// scans that held one, and what those scans skipped (file ranges and row groups by
/// statistics, at open or mid-scan as the filter tightened, and rows by page index or
/// row filter). Their static predicates' share counts in: a scan has one set of figures.
pub fn effect_of(plan: &Arc<dyn ExecutionPlan>) -> Result<InStageFilterEffect> {
    let mut effect = InStageFilterEffect::default();
    let mut scans: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    plan.apply(|node| {
        let Some(kind) = producer_kind(node) else {
            return Ok(TreeNodeRecursion::Continue);
        };
        for filter in node.dynamic_expressions_produced() {
            let Some(id) = filter.expression_id() else {
                continue;
            };
            for child in node.children() {
                child.apply(|below| {
                    if below.is::<DataSourceExec>() && holds_expression(below, id)? {
                        if !effect.kinds.iter().any(|k| k == kind) {
                            effect.kinds.push(kind.to_string());
                        }
                        if !scans.iter().any(|s| Arc::ptr_eq(s, below)) {
                            scans.push(below.clone());
                        }
                    }
                    Ok(TreeNodeRecursion::Continue)
                })?;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    effect.scans = scans.len() as u64;
    for metrics in scans.iter().filter_map(|scan| scan.metrics()) {
        for metric in metrics.iter() {
            let (name, value) = match metric.value() {
                MetricValue::PruningMetrics {
                    name,
                    pruning_metrics,
                } => (name.as_ref(), pruning_metrics.pruned() as u64),
                MetricValue::Count { name, count } => (name.as_ref(), count.value() as u64),
                _ => continue,
            };
            match name {
                "files_ranges_pruned_statistics" => effect.file_ranges_pruned += value,
                "row_groups_pruned_statistics" | "row_groups_pruned_dynamic_filter" => {
                    effect.row_groups_pruned += value
                }
                "page_index_rows_pruned" | "pushdown_rows_pruned" => effect.rows_pruned += value,
                _ => {}
            }
        }
    }
    Ok(effect)
}

/// The kind of dynamic filter `node` produces, when it is an operator whose filter a
/// scan can take: a hash join, a TopK or an aggregate.
fn producer_kind(node: &Arc<dyn ExecutionPlan>) -> Option<&'static str> {
    if node.is::<HashJoinExec>() {
        Some("join")
    } else if node.is::<AggregateExec>() {
        Some("aggregate")
    } else if node
        .downcast_ref::<SortExec>()
        .is_some_and(|sort| sort.fetch().is_some())
    {
        Some("topk")
    } else {
        None
    }
}

/// True when an expression of `node` itself (not of its inputs) has `expression_id`.
fn holds_expression(node: &Arc<dyn ExecutionPlan>, expression_id: u64) -> Result<bool> {
    let mut found = false;
    node.apply_expressions(&mut |root| {
        root.apply(|expr| {
            found |= expr.expression_id() == Some(expression_id);
            Ok(if found {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })
    })?;
    Ok(found)
}

/// True when an expression of `plan` or of an operator beneath it has `expression_id`.
fn contains_expression(plan: &Arc<dyn ExecutionPlan>, expression_id: u64) -> Result<bool> {
    plan.exists(|node| holds_expression(node, expression_id))
}

/// A plan of one partition that yields what partition `partition` of `plan` yields.
///
/// Operators whose output partition `i` comes from partition `i` of their inputs (and
/// the whole of single-partition ones, like a `CollectLeft` join's build side) are
/// rebuilt over narrowed inputs; below anything else a [`PartitionSliceExec`] runs the
/// one partition.
pub fn narrow(plan: Arc<dyn ExecutionPlan>, partition: usize) -> Result<Arc<dyn ExecutionPlan>> {
    let count = plan.output_partitioning().partition_count();
    if count == 1 && partition == 0 {
        return Ok(plan);
    }
    let Some(narrowed_inputs) = partition_wise_inputs(&plan) else {
        return Ok(Arc::new(PartitionSliceExec::try_new(plan, partition)?));
    };
    let children = plan
        .children()
        .into_iter()
        .zip(narrowed_inputs)
        .map(|(child, by_partition)| {
            if by_partition {
                narrow(child.clone(), partition)
            } else {
                Ok(child.clone())
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let rebuilt = replace_children_if_necessary(plan.clone(), children)?;
    if rebuilt.output_partitioning().partition_count() == 1 {
        Ok(rebuilt)
    } else {
        Ok(Arc::new(PartitionSliceExec::try_new(plan, partition)?))
    }
}

/// For an operator whose output partition `i` is made from partition `i` of some of
/// its inputs and the whole of the others (which have one partition): which inputs it
/// reads partition by partition. None for any other operator.
fn partition_wise_inputs(plan: &Arc<dyn ExecutionPlan>) -> Option<Vec<bool>> {
    let one_input = plan.is::<FilterExec>()
        || plan.is::<ProjectionExec>()
        || plan.is::<CooperativeExec>()
        || plan.is::<LocalLimitExec>()
        || plan.is::<UnnestExec>()
        || plan.is::<BoundedWindowAggExec>()
        || plan.is::<WindowAggExec>()
        || plan.is::<ProbeFilterExec>()
        || plan.is::<KeySummaryExec>()
        || plan.is::<ShuffleWriterExec>()
        || plan
            .downcast_ref::<SortExec>()
            .is_some_and(|s| s.preserve_partitioning())
        || plan.downcast_ref::<AggregateExec>().is_some_and(|a| {
            matches!(
                a.mode(),
                AggregateMode::Partial
                    | AggregateMode::FinalPartitioned
                    | AggregateMode::SinglePartitioned
            )
        });
    let inputs = if one_input {
        vec![true]
    } else if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        match join.partition_mode() {
            PartitionMode::Partitioned => vec![true, true],
            // The join types that emit build rows once the probe side ends would emit
            // them from every task's instance.
            PartitionMode::CollectLeft if probe_side_only(*join.join_type()) => {
                vec![false, true]
            }
            _ => return None,
        }
    } else {
        return None;
    };
    let count = plan.output_partitioning().partition_count();
    let children = plan.children();
    let fits = children.len() == inputs.len()
        && children.iter().zip(&inputs).all(|(child, by_partition)| {
            let child_count = child.output_partitioning().partition_count();
            if *by_partition {
                child_count == count
            } else {
                child_count == 1
            }
        });
    fits.then_some(inputs)
}

/// True for the join types whose output rows each come with a probe-side row.
fn probe_side_only(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
    )
}

/// Partition `partition` of its input as its only partition: where a task's own plan
/// instance stops narrowing (see [`narrow`]). Filters pass through it.
#[derive(Debug)]
pub struct PartitionSliceExec {
    input: Arc<dyn ExecutionPlan>,
    partition: usize,
    properties: Arc<PlanProperties>,
}

impl PartitionSliceExec {
    /// Partition `partition` of `input`, which must have it.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, partition: usize) -> Result<Self> {
        let count = input.output_partitioning().partition_count();
        if partition >= count {
            return internal_err!("a plan of {count} partitions has no partition {partition}");
        }
        let properties = input.properties();
        let properties = Arc::new(PlanProperties::new(
            properties.equivalence_properties().clone(),
            Partitioning::UnknownPartitioning(1),
            properties.emission_type,
            properties.boundedness,
        ));
        Ok(Self {
            input,
            partition,
            properties,
        })
    }
}

impl DisplayAs for PartitionSliceExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PartitionSliceExec: partition={}", self.partition)
    }
}

impl ExecutionPlan for PartitionSliceExec {
    fn name(&self) -> &str {
        "PartitionSliceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn try_pushdown_sort(
        &self,
        order: &[PhysicalSortExpr],
    ) -> Result<SortOrderPushdownResult<Arc<dyn ExecutionPlan>>> {
        let slice = |inner| -> Result<Arc<dyn ExecutionPlan>> {
            Ok(Arc::new(Self::try_new(inner, self.partition)?))
        };
        Ok(match self.input.try_pushdown_sort(order)? {
            SortOrderPushdownResult::Exact { inner } => SortOrderPushdownResult::Exact {
                inner: slice(inner)?,
            },
            SortOrderPushdownResult::Inexact { inner } => SortOrderPushdownResult::Inexact {
                inner: slice(inner)?,
            },
            SortOrderPushdownResult::Unsupported => SortOrderPushdownResult::Unsupported,
        })
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = only_child("PartitionSliceExec", children)?;
        Ok(Arc::new(Self::try_new(input, self.partition)?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("PartitionSliceExec has one partition, not {partition}");
        }
        self.input.execute(self.partition, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

    use crate::config::distributed_session_config;
    use crate::planner::wire_tests::{planned, round_trip};

    /// Writes `keys` (column `k`, and `v` = 10 × `k`) to a parquet file of row groups
    /// of 100 rows.
    fn write(path: &std::path::Path, keys: std::ops::Range<i32>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, false),
            Field::new("v", DataType::Int32, false),
        ]));
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(100))
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(properties)).unwrap();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from_iter_values(keys.clone())),
                Arc::new(Int32Array::from_iter_values(keys.map(|k| k * 10))),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    /// A session planning as the scheduler does (dynamic filters off), over `fact`
    /// (four files of keys 0..4000, so four partitions) and `dim` (one file, keys
    /// 0..50), and the options a task with DataFusion's dynamic filters on runs with.
    async fn tables(dir: &std::path::Path) -> (SessionContext, SessionConfig) {
        let fact = dir.join("fact");
        std::fs::create_dir(&fact).unwrap();
        for file in 0..4 {
            write(
                &fact.join(format!("{file}.parquet")),
                file * 1000..(file + 1) * 1000,
            );
        }
        write(&dir.join("dim.parquet"), 0..50);
        let planning = distributed_session_config(4);
        let ctx = SessionContext::new_with_config(planning.clone());
        let options = ParquetReadOptions::default();
        ctx.register_parquet("fact", fact.to_str().unwrap(), options.clone())
            .await
            .unwrap();
        ctx.register_parquet("dim", dir.join("dim.parquet").to_str().unwrap(), options)
            .await
            .unwrap();
        let mut running = planning;
        running
            .options_mut()
            .set(
                "datafusion.optimizer.enable_dynamic_filter_pushdown",
                "true",
            )
            .unwrap();
        (ctx, running)
    }

    async fn rows(
        plan: &Arc<dyn ExecutionPlan>,
        partition: usize,
        config: &SessionConfig,
    ) -> String {
        let ctx = SessionContext::new_with_config(config.clone()).task_ctx();
        let stream = plan.execute(partition, ctx).unwrap();
        let batches = datafusion::physical_plan::common::collect(stream)
            .await
            .unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    fn shown(plan: &Arc<dyn ExecutionPlan>) -> String {
        displayable(plan.as_ref()).indent(false).to_string()
    }

    #[tokio::test]
    async fn each_task_of_a_join_stage_gets_its_partition_with_the_join_filter_in_its_scan() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, running) = tables(dir.path()).await;
        let sql = "select f.k, f.v from fact f join dim d on f.k = d.k where d.v < 100";
        let plan = planned(&ctx, sql).await;
        let reference = planned(&ctx, sql).await;
        assert!(
            shown(&plan).contains("mode=CollectLeft"),
            "{}",
            shown(&plan)
        );
        assert_eq!(plan.output_partitioning().partition_count(), 4);
        let mut last = None;
        for partition in 0..4 {
            let own = task_instance(&plan, partition, running.options())
                .unwrap()
                .expect("the join's filter reaches the fact scan");
            assert_eq!(own.output_partitioning().partition_count(), 1);
            assert!(shown(&own).contains("DynamicFilter"), "{}", shown(&own));
            assert_eq!(
                rows(&own, 0, &running).await,
                rows(&reference, partition, &running).await,
                "partition {partition}"
            );
            last = Some(own);
        }
        // Keys 0..10 match, in the first of the ten row groups of the first file: the
        // scans skip the other three files and nine row groups. (The four instances
        // share the scan's metrics.)
        let effect = effect_of(&last.unwrap()).unwrap();
        assert_eq!((effect.kinds, effect.scans), (vec!["join".to_string()], 1));
        assert_eq!(
            (effect.file_ranges_pruned, effect.row_groups_pruned),
            (3, 9)
        );

        // With join filters off the tasks share the stage plan.
        let mut off = running.clone();
        off.options_mut()
            .set(
                "datafusion.optimizer.enable_join_dynamic_filter_pushdown",
                "false",
            )
            .unwrap();
        assert!(task_instance(&plan, 0, off.options()).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_join_whose_partitions_one_task_merges_gets_no_join_filter() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, running) = tables(dir.path()).await;
        // Narrowing stops at the sort-preserving merge, above the join, which would
        // then wait for four partitions: no join filter, and so no instance of its own.
        let plan = planned(
            &ctx,
            "select f.k from fact f join dim d on f.k = d.k order by f.k",
        )
        .await;
        assert_eq!(plan.output_partitioning().partition_count(), 1);
        let own = task_instance(&plan, 0, running.options()).unwrap();
        assert!(own.is_none(), "{}", shown(&own.unwrap()));
    }

    #[tokio::test]
    async fn a_topk_task_filters_its_scan_and_a_second_attempt_answers_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, running) = tables(dir.path()).await;
        let sql = "select k, v from fact order by v desc limit 3";
        let expected = rows(&planned(&ctx, sql).await, 0, &running).await;
        // Each attempt gets an instance of its own, as an executor decodes one for it.
        for attempt in 0..2 {
            let plan = round_trip(&ctx, planned(&ctx, sql).await);
            assert!(
                !shown(&plan).contains("reverse_row_groups"),
                "{}",
                shown(&plan)
            );
            let own = task_instance(&plan, 0, running.options())
                .unwrap()
                .expect("the TopK filter reaches the scan");
            // The scan reads the row groups with the largest `v` first again.
            let text = shown(&own);
            assert!(text.contains("DynamicFilter"), "{text}");
            assert!(text.contains("reverse_row_groups=true"), "{text}");
            assert_eq!(rows(&own, 0, &running).await, expected, "attempt {attempt}");
            // Once the heap holds the three largest, the other row groups are skipped.
            let effect = effect_of(&own).unwrap();
            assert_eq!((effect.kinds, effect.scans), (vec!["topk".to_string()], 1));
            assert!(effect.row_groups_pruned > 0, "attempt {attempt}: {text}");
        }
        let mut off = running.clone();
        off.options_mut()
            .set(
                "datafusion.optimizer.enable_dynamic_filter_pushdown",
                "false",
            )
            .unwrap();
        let plan = planned(&ctx, sql).await;
        assert!(task_instance(&plan, 0, off.options()).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_max_aggregate_task_filters_its_scan_and_a_second_attempt_answers_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, running) = tables(dir.path()).await;
        // (A filter, so that the answer cannot come from the files' statistics.)
        let sql = "select max(v) from fact where k % 7 = 3";
        // The partial aggregate over the scan's four partitions: one task each.
        let partial = |plan: &Arc<dyn ExecutionPlan>| {
            let mut found = None;
            plan.apply(|node| {
                if node.output_partitioning().partition_count() == 4 {
                    found = Some(node.clone());
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            found.expect("a plan of four partitions")
        };
        let reference = partial(&planned(&ctx, sql).await);
        assert!(reference.is::<AggregateExec>(), "{}", shown(&reference));
        for partition in 0..4 {
            let expected = rows(&reference, partition, &running).await;
            for attempt in 0..2 {
                let stage = partial(&round_trip(&ctx, planned(&ctx, sql).await));
                let own = task_instance(&stage, partition, running.options())
                    .unwrap()
                    .expect("the aggregate's filter reaches the scan");
                assert!(shown(&own).contains("DynamicFilter"), "{}", shown(&own));
                assert_eq!(
                    rows(&own, 0, &running).await,
                    expected,
                    "partition {partition}, attempt {attempt}"
                );
            }
        }
    }

    #[test]
    fn a_slice_runs_the_one_partition_it_names() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int32, false)]));
        let empty: Arc<dyn ExecutionPlan> =
            Arc::new(datafusion::physical_plan::empty::EmptyExec::new(schema).with_partitions(3));
        let slice: Arc<dyn ExecutionPlan> =
            Arc::new(PartitionSliceExec::try_new(empty.clone(), 2).unwrap());
        assert_eq!(slice.output_partitioning().partition_count(), 1);
        assert!(slice.execute(0, Arc::new(TaskContext::default())).is_ok());
        assert!(slice.execute(1, Arc::new(TaskContext::default())).is_err());
        assert!(PartitionSliceExec::try_new(empty, 3).is_err());
    }
}
