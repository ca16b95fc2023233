//! The probe side of a join filter: the keys shipped with a task become a predicate
//! that prunes the parquet row groups and pages of the scans beneath it and, before a
//! shuffle, filters the probe rows.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{ScalarValue, config::ConfigOptions};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, in_list, lit};
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::{FilterExec, batch_filter};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricValue, MetricsSet,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

use super::KeySummary;
use super::bloom::KeyBloom;
use crate::planner::{only_child, visit_exprs};

/// Filters its input by the build-side keys of filter `filter_id`, once the task was
/// shipped them ([`Self::with_keys`]); until then it is not in the plan that runs
/// ([`apply_filters`] takes it out).
#[derive(Debug)]
pub struct ProbeFilterExec {
    filter_id: u32,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The filter the shipped keys make, with a short description for display.
    predicate: Option<(Arc<dyn PhysicalExpr>, String)>,
    /// The shipped Bloom filter of the keys, which rows must pass too (not when
    /// pruning only).
    bloom: Option<Arc<KeyBloom>>,
    /// Only prune the scans beneath; pass every row that reaches it on (the join right
    /// above drops the rows that do not match for the same price as a filter would).
    prune_only: bool,
    input: Arc<dyn ExecutionPlan>,
    metrics: ExecutionPlanMetricsSet,
}

impl ProbeFilterExec {
    /// A probe filter for `filter_id` over the join keys `keys` (over `input`'s schema).
    pub fn new(
        filter_id: u32,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        input: Arc<dyn ExecutionPlan>,
    ) -> Self {
        Self {
            filter_id,
            keys,
            predicate: None,
            bloom: None,
            prune_only: false,
            input,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// This filter, pruning the scans beneath only: rows that reach it all pass.
    pub fn pruning_only(self) -> Self {
        Self {
            prune_only: true,
            ..self
        }
    }

    /// True when it only prunes the scans beneath and filters no row.
    pub fn is_pruning_only(&self) -> bool {
        self.prune_only
    }

    /// The filter it applies.
    pub fn filter_id(&self) -> u32 {
        self.filter_id
    }

    /// The probe-side join keys, over the input's schema.
    pub fn keys(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.keys
    }

    /// This filter with the build side's keys: rows whose keys lie outside them go.
    pub fn with_keys(&self, summary: &KeySummary) -> Result<Self> {
        let predicate = predicate_for(&self.keys, summary, &self.input.schema(), usize::MAX)?;
        Ok(Self {
            filter_id: self.filter_id,
            keys: self.keys.clone(),
            predicate: Some((predicate, summary.describe())),
            bloom: (summary.bloom.clone())
                .filter(|_| !self.prune_only && !summary.is_empty())
                .map(Arc::new),
            prune_only: self.prune_only,
            input: self.input.clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The predicate it filters by, once it has keys.
    pub fn predicate(&self) -> Option<&Arc<dyn PhysicalExpr>> {
        self.predicate.as_ref().map(|(p, _)| p)
    }
}

/// `key >= min AND key <= max AND key IN (values)` for every key the summary bounds,
/// the `IN` only for at most `max_listed` values; `false` when the build side had no
/// key at all. A key whose values cannot be put in the probe key's type is left
/// unfiltered.
fn predicate_for(
    keys: &[Arc<dyn PhysicalExpr>],
    summary: &KeySummary,
    schema: &Schema,
    max_listed: usize,
) -> Result<Arc<dyn PhysicalExpr>> {
    if summary.columns.len() != keys.len() {
        return Err(DataFusionError::Internal(format!(
            "join filter {} has {} keys, its summary {}",
            summary.filter_id,
            keys.len(),
            summary.columns.len()
        )));
    }
    if summary.is_empty() {
        return Ok(lit(false));
    }
    let mut conjuncts: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
    for (key, column) in keys.iter().zip(&summary.columns) {
        let data_type = key.data_type(schema)?;
        let Some((min, max)) = &column.range else {
            continue;
        };
        let (Some(min), Some(max)) = (cast(min, &data_type), cast(max, &data_type)) else {
            continue;
        };
        let compare = |op, value: ScalarValue| -> Arc<dyn PhysicalExpr> {
            Arc::new(BinaryExpr::new(key.clone(), op, lit(value)))
        };
        if min == max {
            conjuncts.push(compare(Operator::Eq, min));
            continue;
        }
        conjuncts.push(compare(Operator::GtEq, min));
        conjuncts.push(compare(Operator::LtEq, max));
        if let Some(values) = column.values.as_ref().filter(|v| v.len() <= max_listed) {
            let list: Option<Vec<Arc<dyn PhysicalExpr>>> = values
                .iter()
                .map(|v| cast(v, &data_type).map(lit))
                .collect();
            if let Some(list) = list {
                conjuncts.push(in_list(key.clone(), list, &false, schema)?);
            }
        }
    }
    Ok(conjuncts
        .into_iter()
        .reduce(|a, b| Arc::new(BinaryExpr::new(a, Operator::And, b)))
        .unwrap_or_else(|| lit(true)))
}

/// Share of a key's range of values that bounds must leave out to be handed to the scans
/// beneath: they can skip at most the data whose keys lie outside (all of it where the
/// data is sorted by the key, none where keys spread over every row group), and trying
/// costs every scan reading page indexes and bloom filters, then decoding by row
/// selection (TPC-H SF 1, a semi join whose 2,127 keys spanned 99.9 % of `l_partkey`:
/// 1.4× the join stage's task time, nothing skipped).
const MIN_EXCLUDED_SHARE: f64 = 0.25;

/// True when, by `plan`'s statistics, the summary's bounds leave out less than
/// [`MIN_EXCLUDED_SHARE`] of the range of every key: pruning with them would skip
/// little. False where a key's range is unknown or not numeric.
fn bounds_exclude_little(
    plan: &Arc<dyn ExecutionPlan>,
    keys: &[Arc<dyn PhysicalExpr>],
    summary: &KeySummary,
) -> bool {
    let Ok(statistics) = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new())
    else {
        return false;
    };
    let mut bounded = false;
    for (key, column) in keys.iter().zip(&summary.columns) {
        let Some((min, max)) = &column.range else {
            continue;
        };
        let Some(stats) = key
            .downcast_ref::<Column>()
            .and_then(|c| statistics.column_statistics.get(c.index()))
        else {
            return false;
        };
        let (Some(low), Some(high)) = (stats.min_value.get_value(), stats.max_value.get_value())
        else {
            return false;
        };
        let (Some(low), Some(high), Some(min), Some(max)) =
            (number(low), number(high), number(min), number(max))
        else {
            return false;
        };
        let span = high - low;
        if span <= 0.0 {
            return false;
        }
        let kept = (max.min(high) - min.max(low)).max(0.0);
        if 1.0 - kept / span >= MIN_EXCLUDED_SHARE {
            return false;
        }
        bounded = true;
    }
    bounded
}

/// `value` as a number, for an integer, decimal, float, date or timestamp.
fn number(value: &ScalarValue) -> Option<f64> {
    let as_float = |v: &ScalarValue| match v.cast_to(&DataType::Float64).ok()? {
        ScalarValue::Float64(f) => f,
        _ => None,
    };
    as_float(value).or_else(|| match value.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(i) => i.map(|i| i as f64),
        _ => None,
    })
}

/// `value` as `data_type`, if it can be.
fn cast(value: &ScalarValue, data_type: &DataType) -> Option<ScalarValue> {
    if &value.data_type() == data_type {
        return Some(value.clone());
    }
    value.cast_to(data_type).ok().filter(|v| !v.is_null())
}

/// Puts the shipped `filters` into `plan`: each [`ProbeFilterExec`] with keys for its
/// filter gets them, and hands its predicate (its key list only when short) to the
/// parquet scans beneath it for row-group and page pruning; one without keys is taken
/// out.
pub fn apply_filters(
    plan: Arc<dyn ExecutionPlan>,
    filters: &[KeySummary],
    config: &ConfigOptions,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(probe) = node.downcast_ref::<ProbeFilterExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(summary) = filters.iter().find(|f| f.filter_id == probe.filter_id) else {
            return Ok(Transformed::yes(probe.input.clone()));
        };
        let filtered = probe.with_keys(summary)?;
        // Scans prune with a key list only as long as DataFusion's own join filters
        // use one: checking thousands of keys against every row group's and page's
        // statistics cost more than it pruned (TPC-H SF 1, 2,127 keys: 1.6× the
        // join stage's task time).
        let max_listed = config
            .optimizer
            .hash_join_inlist_pushdown_max_distinct_values;
        let listed = summary
            .columns
            .iter()
            .any(|c| c.values.as_ref().is_some_and(|v| v.len() <= max_listed));
        let input = if !listed && bounds_exclude_little(&probe.input, &probe.keys, summary) {
            filtered.input.clone()
        } else {
            let pruning = predicate_for(&probe.keys, summary, &probe.input.schema(), max_listed)?;
            push_into_scans(filtered.input.clone(), pruning, config)?
        };
        Ok(Transformed::yes(
            Arc::new(ProbeFilterExec { input, ..filtered }) as Arc<dyn ExecutionPlan>,
        ))
    })
    .map(|t| t.data)
}

/// Hands `predicate` (over `plan`'s schema) to the file scans `plan` reads through
/// operators that keep every row's values (filters, repartitioning,
/// projections, whose expressions replace the columns they make). Below anything else
/// (a limit, an aggregate, a join) the rows are not the ones filtered, and it stops.
fn push_into_scans(
    plan: Arc<dyn ExecutionPlan>,
    predicate: Arc<dyn PhysicalExpr>,
    config: &ConfigOptions,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(scan) = plan.downcast_ref::<DataSourceExec>() {
        let pushed = scan
            .data_source()
            .try_pushdown_filters(vec![predicate], config)?;
        return Ok(match pushed.updated_node {
            Some(source) => Arc::new(scan.clone().with_data_source(source)),
            None => plan,
        });
    }
    let predicate = if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        let exprs: Vec<Arc<dyn PhysicalExpr>> =
            projection.expr().iter().map(|e| e.expr.clone()).collect();
        predicate
            .transform(|e| match e.downcast_ref::<Column>() {
                Some(column) => Ok(Transformed::yes(exprs[column.index()].clone())),
                None => Ok(Transformed::no(e)),
            })?
            .data
    } else {
        let keeps_rows = plan.is::<RepartitionExec>()
            || plan.is::<CooperativeExec>()
            || plan
                .downcast_ref::<FilterExec>()
                .is_some_and(|f| f.projection().is_none());
        if !keeps_rows {
            return Ok(plan);
        }
        predicate
    };
    let [child] = plan.children()[..] else {
        return Ok(plan);
    };
    let pushed = push_into_scans(child.clone(), predicate, config)?;
    if Arc::ptr_eq(&pushed, child) {
        return Ok(plan);
    }
    replace_children_if_necessary(plan, vec![pushed])
}

/// What the filters of one task removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FilterEffect {
    /// Rows that reached a probe filter.
    pub rows_in: u64,
    /// Of those, rows it removed.
    pub rows_removed: u64,
    /// Parquet row groups the scans beneath it skipped (by any of their predicates).
    pub row_groups_pruned: u64,
}

impl FilterEffect {
    /// What the probe filters of `plan` and the scans beneath them did for `partition`.
    pub fn of(plan: &Arc<dyn ExecutionPlan>, partition: usize) -> Self {
        let mut effect = Self::default();
        let _ = plan.apply(|node| {
            if let Some(probe) = node.downcast_ref::<ProbeFilterExec>() {
                let metrics = probe.metrics.clone_inner();
                effect.rows_in += count(&metrics, "filter_rows_in", partition);
                effect.rows_removed += count(&metrics, "filter_rows_removed", partition);
                let _ = probe.input.apply(|below| {
                    if let Some(metrics) = below
                        .downcast_ref::<DataSourceExec>()
                        .and_then(|scan| scan.metrics())
                    {
                        effect.row_groups_pruned +=
                            pruned(&metrics, "row_groups_pruned_statistics", partition);
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
            }
            Ok(TreeNodeRecursion::Continue)
        });
        effect
    }
}

fn count(metrics: &MetricsSet, name: &str, partition: usize) -> u64 {
    metrics
        .iter()
        .filter(|m| m.partition() == Some(partition) && m.value().name() == name)
        .map(|m| m.value().as_usize() as u64)
        .sum()
}

fn pruned(metrics: &MetricsSet, name: &str, partition: usize) -> u64 {
    metrics
        .iter()
        .filter(|m| m.partition() == Some(partition))
        .filter_map(|m| match m.value() {
            MetricValue::PruningMetrics {
                name: n,
                pruning_metrics,
            } if n == name => Some(pruning_metrics.pruned() as u64),
            _ => None,
        })
        .sum()
}

impl DisplayAs for ProbeFilterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(|k| k.to_string()).collect();
        write!(
            f,
            "ProbeFilterExec: filter={} keys=[{}]",
            self.filter_id,
            keys.join(", ")
        )?;
        if self.prune_only {
            write!(f, " prune_only")?;
        }
        if let Some((_, described)) = &self.predicate {
            write!(f, " build={described}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ProbeFilterExec {
    fn name(&self) -> &str {
        "ProbeFilterExec"
    }

    /// A filter keeps its input's partitioning, order and equivalences.
    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        visit_exprs(&self.keys, f)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = only_child("ProbeFilterExec", children)?;
        Ok(Arc::new(Self {
            filter_id: self.filter_id,
            keys: self.keys.clone(),
            predicate: self.predicate.clone(),
            bloom: self.bloom.clone(),
            prune_only: self.prune_only,
            input,
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let Some((predicate, _)) = self.predicate.clone() else {
            return Ok(input);
        };
        let rows_in: Count = MetricBuilder::new(&self.metrics).counter("filter_rows_in", partition);
        let removed: Count =
            MetricBuilder::new(&self.metrics).counter("filter_rows_removed", partition);
        let schema = input.schema();
        let prune_only = self.prune_only;
        let (keys, bloom) = (self.keys.clone(), self.bloom.clone());
        let filtered = input.map(move |batch| {
            let batch = batch?;
            if prune_only {
                rows_in.add(batch.num_rows());
                return Ok(batch);
            }
            let mut kept = batch_filter(&batch, &predicate)?;
            if let Some(bloom) = &bloom {
                let values = (keys.iter())
                    .map(|k| k.evaluate(&kept)?.into_array(kept.num_rows()))
                    .collect::<Result<Vec<_>>>()?;
                kept = filter_record_batch(&kept, &bloom.may_contain(&values)?)?;
            }
            rows_in.add(batch.num_rows());
            removed.add(batch.num_rows() - kept.num_rows());
            Ok(kept)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, filtered)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join_filters::KeyColumn;
    use datafusion::arrow::array::{Int32Array, RecordBatch};
    use datafusion::arrow::datatypes::Field;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_expr::expressions::col;

    fn probe_input() -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int32, true)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int32Array::from(vec![
                Some(1),
                Some(4),
                None,
                Some(6),
                Some(9),
            ]))],
        )
        .unwrap();
        MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap()
    }

    async fn kept(summary: KeySummary) -> Vec<Option<i32>> {
        let input = probe_input();
        let keys = vec![col("k", &input.schema()).unwrap()];
        let probe: Arc<dyn ExecutionPlan> = Arc::new(ProbeFilterExec::new(3, keys, input));
        let plan = apply_filters(probe, &[summary], &ConfigOptions::default()).unwrap();
        let stream = plan.execute(0, Arc::new(TaskContext::default())).unwrap();
        let batches = datafusion::physical_plan::common::collect(stream)
            .await
            .unwrap();
        let effect = FilterEffect::of(&plan, 0);
        let rows: Vec<Option<i32>> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int32Array>()
                    .unwrap()
                    .iter()
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(effect.rows_in, 5);
        assert_eq!(effect.rows_removed, 5 - rows.len() as u64);
        rows
    }

    fn build(range: Option<(i64, i64)>, values: Option<Vec<i64>>) -> KeySummary {
        // The build key is Int64 here: values are cast to the probe key's type.
        KeySummary {
            filter_id: 3,
            bloom: None,
            columns: vec![KeyColumn {
                range: range
                    .map(|(a, b)| (ScalarValue::Int64(Some(a)), ScalarValue::Int64(Some(b)))),
                values: values
                    .map(|v| v.into_iter().map(|x| ScalarValue::Int64(Some(x))).collect()),
            }],
        }
    }

    #[tokio::test]
    async fn probe_rows_outside_the_build_keys_and_null_keys_are_removed() {
        assert_eq!(
            kept(build(Some((2, 8)), None)).await,
            vec![Some(4), Some(6)]
        );
        assert_eq!(
            kept(build(Some((1, 9)), Some(vec![1, 6, 9]))).await,
            vec![Some(1), Some(6), Some(9)]
        );
        assert_eq!(
            kept(build(Some((4, 4)), Some(vec![4]))).await,
            vec![Some(4)]
        );
        assert_eq!(
            kept(build(None, Some(vec![]))).await,
            Vec::<Option<i32>>::new()
        );
    }

    #[tokio::test]
    async fn past_the_listed_values_a_bloom_filter_removes_the_rows_in_range() {
        // Built over the probe key's type, as the rule has both sides' types equal.
        let mut bloom = KeyBloom::default();
        let keys: datafusion::arrow::array::ArrayRef = Arc::new(Int32Array::from(vec![1, 9]));
        bloom.insert(&[keys]).unwrap();
        let summary = KeySummary {
            bloom: Some(bloom),
            ..build(Some((1, 9)), None)
        };
        assert_eq!(kept(summary.clone()).await, vec![Some(1), Some(9)]);
        // Pruning only, it lets every row through.
        let input = probe_input();
        let keys = vec![col("k", &input.schema()).unwrap()];
        let probe = ProbeFilterExec::new(3, keys, input).pruning_only();
        let probe = probe.with_keys(&summary).unwrap();
        assert!(probe.bloom.is_none());
    }

    #[tokio::test]
    async fn a_probe_filter_without_keys_leaves_the_plan() {
        let input = probe_input();
        let keys = vec![col("k", &input.schema()).unwrap()];
        let probe: Arc<dyn ExecutionPlan> = Arc::new(ProbeFilterExec::new(3, keys, input));
        let other = KeySummary {
            filter_id: 4,
            bloom: None,
            ..build(Some((2, 8)), None)
        };
        let plan = apply_filters(probe, &[other], &ConfigOptions::default()).unwrap();
        assert!(plan.is::<DataSourceExec>(), "{}", plan.name());
    }

    /// A probe filter over a parquet scan of keys 0..400 in four row groups of 100, with
    /// `summary` shipped; and the session it runs in.
    async fn filtered_parquet(
        dir: &std::path::Path,
        summary: KeySummary,
    ) -> (Arc<dyn ExecutionPlan>, datafusion::prelude::SessionContext) {
        use datafusion::parquet::arrow::ArrowWriter;
        use datafusion::parquet::file::properties::WriterProperties;
        use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

        let path = dir.join("t.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int32, false)]));
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(100))
            .build();
        let file = std::fs::File::create(&path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(properties)).unwrap();
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from_iter_values(0..400))])
                .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();

        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        ctx.register_parquet("t", path.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
        let scan = ctx
            .sql("select k from t")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let keys = vec![col("k", &scan.schema()).unwrap()];
        let probe: Arc<dyn ExecutionPlan> = Arc::new(ProbeFilterExec::new(3, keys, scan));
        let plan = apply_filters(probe, &[summary], ctx.state().config_options()).unwrap();
        (plan, ctx)
    }

    #[tokio::test]
    async fn a_shipped_filter_prunes_the_row_groups_of_the_parquet_scan_beneath() {
        let dir = tempfile::tempdir().unwrap();
        let (plan, ctx) = filtered_parquet(dir.path(), build(Some((150, 180)), None)).await;
        let stream = plan.execute(0, ctx.task_ctx()).unwrap();
        let rows: usize = datafusion::physical_plan::common::collect(stream)
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 31);
        let effect = FilterEffect::of(&plan, 0);
        assert_eq!(effect.row_groups_pruned, 3, "{effect:?}");
        // Only the one row group read reaches the filter.
        assert_eq!((effect.rows_in, effect.rows_removed), (100, 69));
    }

    #[tokio::test]
    async fn bounds_that_leave_out_little_of_the_keys_are_not_handed_to_the_scan() {
        // [10, 390] leaves out 5 % of keys 0..400: pruning would skip little.
        let dir = tempfile::tempdir().unwrap();
        let (plan, _ctx) = filtered_parquet(dir.path(), build(Some((10, 390)), None)).await;
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        assert!(!shown.contains("predicate="), "{shown}");
        // A short key list still prunes, so it goes down with the bounds.
        let listed = build(Some((10, 390)), Some(vec![10, 200, 390]));
        let (plan, _ctx) = filtered_parquet(dir.path(), listed).await;
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        assert!(shown.contains("predicate="), "{shown}");
    }
}
