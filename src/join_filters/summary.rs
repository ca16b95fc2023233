//! What a join's build side holds, small enough to ship: per key, the smallest and
//! largest non-null value and, while there are few, every distinct one.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::{Accumulator, EmitTo};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::{
    ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, Statistics,
    StatisticsArgs,
};
use futures::{Stream, StreamExt};
use prost::Message;

use super::bloom::{KeyBloom, MAX_FILL};
use crate::planner::{only_child, visit_exprs};
use crate::proto;

/// Distinct values per key a summary keeps; past this only the range is shipped.
pub const MAX_FILTER_VALUES: usize = 4096;

/// The build-side values of one join key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyColumn {
    /// The smallest and largest non-null value; None when no row had one.
    pub range: Option<(ScalarValue, ScalarValue)>,
    /// Every distinct non-null value, while there are at most the summary's limit.
    pub values: Option<Vec<ScalarValue>>,
}

impl KeyColumn {
    /// A key no row had a value for.
    fn empty() -> Self {
        Self {
            range: None,
            values: Some(Vec::new()),
        }
    }

    /// Widens this to hold `other`'s values too, keeping at most `max_values` of them.
    fn merge(&mut self, other: &KeyColumn, max_values: usize) {
        self.range = match (self.range.take(), &other.range) {
            (None, theirs) => theirs.clone(),
            (ours, None) => ours,
            (Some((min, max)), Some((their_min, their_max))) => Some((
                if their_min < &min {
                    their_min.clone()
                } else {
                    min
                },
                if their_max > &max {
                    their_max.clone()
                } else {
                    max
                },
            )),
        };
        self.values = match (self.values.take(), &other.values) {
            (Some(ours), Some(theirs)) => {
                let mut seen: HashSet<ScalarValue> = ours.iter().cloned().collect();
                let mut merged = ours;
                merged.extend(theirs.iter().filter(|v| seen.insert((*v).clone())).cloned());
                (merged.len() <= max_values).then_some(merged)
            }
            _ => None,
        };
    }
}

/// The build-side keys of one join filter: one task's, or a whole stage's merged.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySummary {
    /// The filter, as the plan's [`KeySummaryExec`] and `ProbeFilterExec` name it.
    pub filter_id: u32,
    /// One per join key, in the join's key order.
    pub columns: Vec<KeyColumn>,
    /// A Bloom filter of the keys, every column hashed together; None once merged with
    /// a summary that had none.
    pub bloom: Option<KeyBloom>,
}

impl KeySummary {
    /// Widens this summary to hold `other`'s keys too.
    pub fn merge(&mut self, other: &KeySummary, max_values: usize) {
        for (ours, theirs) in self.columns.iter_mut().zip(&other.columns) {
            ours.merge(theirs, max_values);
        }
        self.bloom = match (self.bloom.take(), &other.bloom) {
            (Some(mut ours), Some(theirs)) => {
                ours.merge(theirs);
                Some(ours)
            }
            _ => None,
        };
    }

    /// Drops the Bloom filter once merging is done where it adds nothing: every key's
    /// values are listed, or it is more than [`MAX_FILL`] full.
    pub fn finish_merging(&mut self) {
        let listed = self.columns.iter().all(|c| c.values.is_some());
        if listed || self.bloom.as_ref().is_some_and(|b| b.fill() > MAX_FILL) {
            self.bloom = None;
        }
    }

    /// True when no build row had a non-null value for some key: no probe row matches.
    pub fn is_empty(&self) -> bool {
        self.columns.iter().any(|c| c.range.is_none())
    }

    /// One line for status: "2 keys in [1, 9]; 40 values".
    pub fn describe(&self) -> String {
        if self.is_empty() {
            return "no build keys (everything filtered)".into();
        }
        self.columns
            .iter()
            .map(|c| {
                let (min, max) = c.range.as_ref().expect("not empty");
                match &c.values {
                    Some(values) => format!("{} values in [{min}, {max}]", values.len()),
                    None => format!("[{min}, {max}]"),
                }
            })
            .chain(
                self.bloom
                    .iter()
                    .map(|b| format!("bloom filter {:.0} % full", b.fill() * 100.0)),
            )
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The wire form.
    pub fn to_proto(&self) -> Result<proto::KeySummary> {
        let columns = self
            .columns
            .iter()
            .map(|c| {
                let (min, max) = match &c.range {
                    Some((min, max)) => (encode_scalar(min)?, encode_scalar(max)?),
                    None => (Vec::new(), Vec::new()),
                };
                let values = match &c.values {
                    Some(values) => values.iter().map(encode_scalar).collect::<Result<_>>()?,
                    None => Vec::new(),
                };
                Ok(proto::KeyColumnSummary {
                    min,
                    max,
                    values,
                    values_complete: c.values.is_some(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(proto::KeySummary {
            filter_id: self.filter_id,
            columns,
            bloom: self.bloom.as_ref().map(KeyBloom::to_proto),
        })
    }

    /// Reads the wire form.
    pub fn from_proto(summary: &proto::KeySummary) -> Result<Self> {
        let columns = summary
            .columns
            .iter()
            .map(|c| {
                let range = if c.min.is_empty() {
                    None
                } else {
                    Some((decode_scalar(&c.min)?, decode_scalar(&c.max)?))
                };
                let values = if c.values_complete {
                    Some(
                        c.values
                            .iter()
                            .map(|v| decode_scalar(v))
                            .collect::<Result<_>>()?,
                    )
                } else {
                    None
                };
                Ok(KeyColumn { range, values })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            filter_id: summary.filter_id,
            columns,
            bloom: summary
                .bloom
                .as_ref()
                .map(KeyBloom::from_proto)
                .transpose()?,
        })
    }
}

fn encode_scalar(value: &ScalarValue) -> Result<Vec<u8>> {
    let encoded = datafusion_proto::protobuf::ScalarValue::try_from(value)
        .map_err(|e| DataFusionError::Internal(format!("join filter value {value}: {e}")))?;
    Ok(encoded.encode_to_vec())
}

fn decode_scalar(bytes: &[u8]) -> Result<ScalarValue> {
    let decoded = datafusion_proto::protobuf::ScalarValue::decode(bytes)
        .map_err(|e| DataFusionError::Internal(format!("join filter value: {e}")))?;
    ScalarValue::try_from(&decoded)
        .map_err(|e| DataFusionError::Internal(format!("join filter value: {e}")))
}

/// Summarises one key over the batches of one task.
struct KeyColumnBuilder {
    min: MinAccumulator,
    max: MaxAccumulator,
    /// The distinct values so far (nulls included, as one group); None once too many.
    distinct: Option<Box<dyn GroupValues>>,
    groups: Vec<usize>,
    max_values: usize,
}

impl KeyColumnBuilder {
    fn try_new(data_type: &DataType, max_values: usize) -> Result<Self> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "key",
            data_type.clone(),
            true,
        )]));
        Ok(Self {
            min: MinAccumulator::try_new(data_type)?,
            max: MaxAccumulator::try_new(data_type)?,
            distinct: Some(new_group_values(schema, &GroupOrdering::None)?),
            groups: Vec::new(),
            max_values,
        })
    }

    fn update(&mut self, values: &ArrayRef) -> Result<()> {
        self.min.update_batch(std::slice::from_ref(values))?;
        self.max.update_batch(std::slice::from_ref(values))?;
        if let Some(distinct) = self.distinct.as_mut() {
            distinct.intern(std::slice::from_ref(values), &mut self.groups)?;
            // One group may be the nulls.
            if distinct.len() > self.max_values + 1 {
                self.distinct = None;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<KeyColumn> {
        let min = self.min.evaluate()?;
        let max = self.max.evaluate()?;
        if min.is_null() || max.is_null() {
            return Ok(KeyColumn::empty());
        }
        let values = match self.distinct.as_mut() {
            Some(distinct) => {
                let emitted = distinct.emit(EmitTo::All)?;
                let array = &emitted[0];
                let mut values = Vec::with_capacity(array.len());
                for i in 0..array.len() {
                    if array.is_valid(i) {
                        values.push(ScalarValue::try_from_array(array, i)?);
                    }
                }
                (values.len() <= self.max_values).then_some(values)
            }
            None => None,
        };
        Ok(KeyColumn {
            range: Some((min, max)),
            values,
        })
    }
}

/// Passes its input on unchanged and summarises the join keys of the rows it passed,
/// per partition, for the scheduler to ship to the join's probe side.
#[derive(Debug)]
pub struct KeySummaryExec {
    filter_id: u32,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    max_values: usize,
    /// Whether the summaries carry a Bloom filter of the keys.
    bloom: bool,
    input: Arc<dyn ExecutionPlan>,
    /// Finished summaries by partition, taken by the task runner.
    finished: Arc<Mutex<HashMap<usize, KeySummary>>>,
}

impl KeySummaryExec {
    /// Summarises `keys` (over `input`'s schema) for filter `filter_id`.
    pub fn new(
        filter_id: u32,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        max_values: usize,
        input: Arc<dyn ExecutionPlan>,
    ) -> Self {
        Self {
            filter_id,
            keys,
            max_values,
            bloom: false,
            input,
            finished: Arc::default(),
        }
    }

    /// This summary, with a Bloom filter of the keys when `bloom` (for a probe that
    /// filters rows; one that only prunes scans has no use for it).
    pub fn with_bloom(self, bloom: bool) -> Self {
        Self { bloom, ..self }
    }

    /// True when its summaries carry a Bloom filter.
    pub fn fills_bloom(&self) -> bool {
        self.bloom
    }

    /// The filter it summarises for.
    pub fn filter_id(&self) -> u32 {
        self.filter_id
    }

    /// The join keys, over the input's schema.
    pub fn keys(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.keys
    }

    /// Distinct values per key it keeps at most.
    pub fn max_values(&self) -> usize {
        self.max_values
    }

    /// The summary of partition `partition`, once its stream has ended (taken: a
    /// second call returns None).
    pub fn take(&self, partition: usize) -> Option<KeySummary> {
        self.finished
            .lock()
            .expect("summary lock")
            .remove(&partition)
    }
}

/// The summaries the [`KeySummaryExec`]s of `plan` made for `partition`.
pub fn summaries_of(plan: &Arc<dyn ExecutionPlan>, partition: usize) -> Vec<KeySummary> {
    let mut found = Vec::new();
    let mut stack = vec![plan.clone()];
    while let Some(node) = stack.pop() {
        if let Some(summary) = node.downcast_ref::<KeySummaryExec>()
            && let Some(taken) = summary.take(partition)
        {
            found.push(taken);
        }
        stack.extend(node.children().into_iter().cloned());
    }
    found
}

impl DisplayAs for KeySummaryExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(|k| k.to_string()).collect();
        write!(
            f,
            "KeySummaryExec: filter={} keys=[{}]",
            self.filter_id,
            keys.join(", ")
        )?;
        if self.bloom {
            write!(f, " bloom")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for KeySummaryExec {
    fn name(&self) -> &str {
        "KeySummaryExec"
    }

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

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        Ok(input_stats[0].clone())
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = only_child("KeySummaryExec", children)?;
        let summary = Self::new(self.filter_id, self.keys.clone(), self.max_values, input);
        Ok(Arc::new(summary.with_bloom(self.bloom)))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.input.schema();
        let builders = self
            .keys
            .iter()
            .map(|k| KeyColumnBuilder::try_new(&k.data_type(&schema)?, self.max_values))
            .collect::<Result<Vec<_>>>()?;
        let input = self.input.execute(partition, context)?;
        Ok(Box::pin(SummaryStream {
            input,
            keys: self.keys.clone(),
            builders: Some(builders),
            bloom: self.bloom.then(KeyBloom::default),
            filter_id: self.filter_id,
            partition,
            finished: self.finished.clone(),
        }))
    }
}

struct SummaryStream {
    input: SendableRecordBatchStream,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    builders: Option<Vec<KeyColumnBuilder>>,
    bloom: Option<KeyBloom>,
    filter_id: u32,
    partition: usize,
    finished: Arc<Mutex<HashMap<usize, KeySummary>>>,
}

impl SummaryStream {
    fn observe(&mut self, batch: &RecordBatch) -> Result<()> {
        let Some(builders) = self.builders.as_mut() else {
            return Ok(());
        };
        let mut arrays = Vec::with_capacity(self.keys.len());
        for (key, builder) in self.keys.iter().zip(builders) {
            let values = key.evaluate(batch)?.into_array(batch.num_rows())?;
            builder.update(&values)?;
            arrays.push(values);
        }
        match self.bloom.as_mut() {
            Some(bloom) => bloom.insert(&arrays),
            None => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<()> {
        let Some(builders) = self.builders.take() else {
            return Ok(());
        };
        let columns = builders
            .into_iter()
            .map(KeyColumnBuilder::finish)
            .collect::<Result<_>>()?;
        self.finished.lock().expect("summary lock").insert(
            self.partition,
            KeySummary {
                filter_id: self.filter_id,
                columns,
                bloom: self.bloom.take(),
            },
        );
        Ok(())
    }
}

impl Stream for SummaryStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match ready!(self.input.poll_next_unpin(cx)) {
            Some(Ok(batch)) => Poll::Ready(Some(self.observe(&batch).map(|()| batch))),
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(self.finish().err().map(Err)),
        }
    }
}

impl RecordBatchStream for SummaryStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_expr::expressions::col;

    fn scan(keys: Vec<Option<i64>>, names: Vec<&str>) -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("s", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(keys)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap();
        MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap()
    }

    async fn summarise(plan: Arc<dyn ExecutionPlan>, max_values: usize) -> KeySummary {
        let schema = plan.schema();
        let keys = vec![col("k", &schema).unwrap(), col("s", &schema).unwrap()];
        let exec = Arc::new(KeySummaryExec::new(7, keys, max_values, plan));
        let stream = exec.execute(0, Arc::new(TaskContext::default())).unwrap();
        let batches = datafusion::physical_plan::common::collect(stream)
            .await
            .unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
        let summaries = summaries_of(&(exec.clone() as Arc<dyn ExecutionPlan>), 0);
        assert!(exec.take(0).is_none(), "a summary is taken once");
        summaries.into_iter().next().unwrap()
    }

    #[tokio::test]
    async fn a_summary_holds_the_range_and_the_distinct_non_null_keys() {
        let plan = scan(
            vec![Some(5), None, Some(2), Some(5)],
            vec!["b", "a", "b", "c"],
        );
        let summary = summarise(plan, 10).await;
        assert_eq!(summary.filter_id, 7);
        let k = &summary.columns[0];
        assert_eq!(
            k.range,
            Some((ScalarValue::Int64(Some(2)), ScalarValue::Int64(Some(5))))
        );
        let mut values = k.values.clone().unwrap();
        values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(
            values,
            vec![ScalarValue::Int64(Some(2)), ScalarValue::Int64(Some(5))]
        );
        assert_eq!(summary.columns[1].values.as_ref().unwrap().len(), 3);
        // Through the wire and back.
        let back = KeySummary::from_proto(&summary.to_proto().unwrap()).unwrap();
        assert_eq!(back, summary);
    }

    #[tokio::test]
    async fn past_the_limit_only_the_range_is_kept() {
        let plan = scan(vec![Some(1), Some(2), Some(3), Some(4)], vec!["a"; 4]);
        let summary = summarise(plan, 3).await;
        assert!(summary.columns[0].values.is_none());
        assert_eq!(
            summary.columns[0].range,
            Some((ScalarValue::Int64(Some(1)), ScalarValue::Int64(Some(4))))
        );
        assert_eq!(summary.columns[1].values.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn merging_widens_ranges_unites_values_and_gives_up_past_the_limit() {
        let int = |v: i64| ScalarValue::Int64(Some(v));
        let column = |min: i64, max: i64, values: &[i64]| KeyColumn {
            range: Some((int(min), int(max))),
            values: Some(values.iter().map(|v| int(*v)).collect()),
        };
        let mut merged = KeySummary {
            filter_id: 1,
            bloom: None,
            columns: vec![KeyColumn::empty()],
        };
        assert!(merged.is_empty());
        merged.merge(
            &KeySummary {
                filter_id: 1,
                bloom: None,
                columns: vec![column(3, 8, &[3, 8])],
            },
            3,
        );
        merged.merge(
            &KeySummary {
                filter_id: 1,
                bloom: None,
                columns: vec![column(1, 3, &[1, 3])],
            },
            3,
        );
        assert_eq!(merged.columns[0], column(1, 8, &[3, 8, 1]));
        assert!(!merged.is_empty());
        assert_eq!(merged.describe(), "3 values in [1, 8]");
        merged.merge(
            &KeySummary {
                filter_id: 1,
                bloom: None,
                columns: vec![column(9, 9, &[9])],
            },
            3,
        );
        assert_eq!(merged.columns[0].values, None, "four values pass the limit");
        assert_eq!(merged.columns[0].range, Some((int(1), int(9))));
    }

    #[tokio::test]
    async fn a_bloom_filter_is_shipped_only_past_the_listed_values_and_while_sparse() {
        let merged = |max_values: usize, rows: i64| async move {
            let keys: Vec<Option<i64>> = (0..rows).map(Some).collect();
            let names = vec!["x"; rows as usize];
            let plan = scan(keys, names);
            let schema = plan.schema();
            let keys = vec![col("k", &schema).unwrap(), col("s", &schema).unwrap()];
            let exec = KeySummaryExec::new(7, keys, max_values, plan).with_bloom(true);
            let exec = Arc::new(exec);
            let stream = exec.execute(0, Arc::new(TaskContext::default())).unwrap();
            datafusion::physical_plan::common::collect(stream)
                .await
                .unwrap();
            let mut summary = exec.take(0).unwrap();
            summary.finish_merging();
            summary
        };
        // Listed values are exact: no Bloom filter.
        assert!(merged(4096, 1000).await.bloom.is_none());
        let past = merged(10, 1000).await;
        assert!(past.bloom.is_some());
        assert!(
            past.describe().contains("bloom filter 0 % full"),
            "{}",
            past.describe()
        );
        // 400 K keys fill it past MAX_FILL.
        assert!(merged(10, 400_000).await.bloom.is_none());
    }
}
