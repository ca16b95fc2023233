//! `ShuffleWriterExec`: the root of every stage. It runs one partition of its input and
//! stores the output in the executor's shuffle store as the task's map partition, split
//! by a hash partitioning or kept whole, then yields one small batch of per-partition
//! statistics.

use std::fmt;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{RecordBatch, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    self, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::repartition::BatchPartitioner;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;

use super::env::TaskEnv;
use super::store::ShuffleKey;
use crate::executor::TaskGate;
use crate::planner::{only_child, visit_exprs};

static STATS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::UInt32, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
    ]))
});

/// The schema of the statistics batch a [`ShuffleWriterExec`] partition yields:
/// `partition`, `rows`, `bytes`, one row per output partition.
pub fn write_stats_schema() -> SchemaRef {
    STATS_SCHEMA.clone()
}

/// Writes its input's partitions into the shuffle store.
#[derive(Debug)]
pub struct ShuffleWriterExec {
    input: Arc<dyn ExecutionPlan>,
    /// `Some(Hash(..))`: split each task's output by hash; `None`: keep it as output
    /// partition 0.
    partitioning: Option<Partitioning>,
    properties: Arc<PlanProperties>,
    /// Rows and bytes stored, time spent splitting and storing (EXPLAIN ANALYZE).
    metrics: ExecutionPlanMetricsSet,
}

impl ShuffleWriterExec {
    /// A writer of `input`'s partitions; `partitioning` must be a hash partitioning or None.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        partitioning: Option<Partitioning>,
    ) -> Result<Self> {
        if let Some(p) = &partitioning
            && !matches!(p, Partitioning::Hash(_, n) if *n > 0)
        {
            return Err(DataFusionError::Plan(format!(
                "shuffle writer supports hash partitioning only, got {p}"
            )));
        }
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(write_stats_schema()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            partitioning,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The plan whose partitions this writes.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// The hash partitioning of the output, if any.
    pub fn partitioning(&self) -> Option<&Partitioning> {
        self.partitioning.as_ref()
    }

    /// Output partitions each task writes.
    pub fn output_partitions(&self) -> usize {
        self.partitioning
            .as_ref()
            .map_or(1, Partitioning::partition_count)
    }
}

impl DisplayAs for ShuffleWriterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.partitioning {
            Some(p) => write!(f, "ShuffleWriterExec: partitioning={p}"),
            None => write!(f, "ShuffleWriterExec: partitioning=none"),
        }
    }
}

impl ExecutionPlan for ShuffleWriterExec {
    fn name(&self) -> &str {
        "ShuffleWriterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        match &self.partitioning {
            Some(Partitioning::Hash(exprs, _)) => visit_exprs(exprs, f),
            _ => Ok(TreeNodeRecursion::Continue),
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = only_child("ShuffleWriterExec", children)?;
        Ok(Arc::new(Self::try_new(input, self.partitioning.clone())?))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let env = TaskEnv::from_context(&context)?;
        let gate = context.session_config().get_extension::<TaskGate>();
        let input = self.input.execute(partition, context)?;
        let schema = self.input.schema();
        let outputs = self.output_partitions();
        let measured = WriteMetrics {
            rows: MetricBuilder::new(&self.metrics).output_rows(partition),
            bytes: MetricBuilder::new(&self.metrics).output_bytes(partition),
            time: MetricBuilder::new(&self.metrics).elapsed_compute(partition),
        };
        let partitioner = match &self.partitioning {
            Some(Partitioning::Hash(exprs, n)) => Some(BatchPartitioner::new_hash_partitioner(
                exprs.clone(),
                *n,
                MetricBuilder::new(&self.metrics).subset_time("repartition_time", partition),
            )?),
            _ => None,
        };
        let write = write_partition(env, gate, input, schema, outputs, partitioner, measured);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            write_stats_schema(),
            futures::stream::once(write).boxed(),
        )))
    }
}

/// What a writer task measures: rows stored and the time splitting and storing them
/// (`output_rows`, `elapsed_compute`), and bytes stored (`output_bytes`).
struct WriteMetrics {
    rows: metrics::Count,
    bytes: metrics::Count,
    time: metrics::Time,
}

async fn write_partition(
    env: Arc<TaskEnv>,
    gate: Option<Arc<TaskGate>>,
    mut input: SendableRecordBatchStream,
    schema: SchemaRef,
    outputs: usize,
    mut partitioner: Option<BatchPartitioner>,
    measured: WriteMetrics,
) -> Result<RecordBatch> {
    let mut writers: Vec<_> = (0..outputs as u32)
        .map(|output_partition| {
            let key = ShuffleKey {
                query_id: env.query_id.clone(),
                stage_id: env.stage_id,
                map_partition: env.map_partition,
                output_partition,
            };
            env.store.writer(key, schema.clone())
        })
        .collect();
    while let Some(batch) = input.next().await {
        let batch = batch?;
        let timer = measured.time.timer();
        match partitioner.as_mut() {
            Some(partitioner) => partitioner.partition(batch, |output, part| {
                writers[output].push(part).map_err(Into::into)
            })?,
            None => writers[0].push(batch)?,
        }
        timer.done();
        // Operators over in-memory input may never return Pending; yielding now and
        // then lets a cancelled task's abort take effect and other tasks run.
        tokio::task::consume_budget().await;
    }
    let timer = measured.time.timer();
    let finished = writers
        .into_iter()
        .map(|w| w.finish())
        .collect::<Result<Vec<_>, _>>()?;
    timer.done();
    for (_, stored) in &finished {
        measured.rows.add(stored.rows() as usize);
        measured.bytes.add(stored.bytes() as usize);
    }
    let stats = RecordBatch::try_new(
        write_stats_schema(),
        vec![
            Arc::new(UInt32Array::from_iter_values(
                finished.iter().map(|(k, _)| k.output_partition),
            )),
            Arc::new(UInt64Array::from_iter_values(
                finished.iter().map(|(_, p)| p.rows()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                finished.iter().map(|(_, p)| p.bytes()),
            )),
        ],
    )?;
    // A stopped task's output is nobody's: its abort may come only after this point.
    if gate.is_some_and(|g| g.is_stopped()) {
        return Err(DataFusionError::Execution(
            "task stopped before its output was kept".into(),
        ));
    }
    env.store.commit(finished);
    Ok(stats)
}
