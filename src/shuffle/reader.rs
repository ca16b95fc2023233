//! `ShuffleReaderExec`: the leaf where a stage reads an input stage's shuffle output.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{
    AcrossPartitions, ConstExpr, EquivalenceProperties, Partitioning, PhysicalExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{StreamExt, TryStreamExt};

use super::env::{MapLocation, TaskEnv};
use super::fetch::UnreadableOutput;
use super::store::ShuffleKey;

/// How a reader's partitions map onto the producer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Reader partition `p` is output partition `p` of every map task (after a hash shuffle).
    Hash,
    /// Reader partition `m` is the whole output of map task `m` (before a coalesce or a
    /// sort-preserving merge, which then combine the partitions in the consumer).
    PerMap,
}

/// How many map outputs one reader partition fetches at once.
const CONCURRENT_FETCHES: usize = 8;

/// Reads one input stage's shuffle output.
#[derive(Debug)]
pub struct ShuffleReaderExec {
    stage_id: u32,
    schema: SchemaRef,
    partitions: usize,
    mode: ReadMode,
    hash_keys: Vec<Arc<dyn PhysicalExpr>>,
    constants: Vec<(Arc<dyn PhysicalExpr>, ScalarValue)>,
    properties: Arc<PlanProperties>,
    /// Rows read, map outputs read locally and fetched, time waiting for peers to
    /// answer (EXPLAIN ANALYZE).
    metrics: ExecutionPlanMetricsSet,
}

impl ShuffleReaderExec {
    /// A reader of stage `stage_id`'s output as `partitions` partitions, of unknown
    /// partitioning.
    pub fn new(stage_id: u32, schema: SchemaRef, partitions: usize, mode: ReadMode) -> Self {
        Self {
            properties: Self::properties_for(
                &schema,
                Partitioning::UnknownPartitioning(partitions),
            ),
            stage_id,
            schema,
            partitions,
            mode,
            hash_keys: Vec::new(),
            constants: Vec::new(),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// A [`ReadMode::Hash`] reader whose producer hashed its rows on `keys` (expressions
    /// over this reader's schema): its partitioning is then `Hash(keys, partitions)`, as
    /// the `RepartitionExec` it replaces said, so operators that need inputs partitioned
    /// alike (a union turned `InterleaveExec`, a partitioned join) stay valid after the
    /// plan is cut and when a stage is decoded.
    pub fn hashed(
        stage_id: u32,
        schema: SchemaRef,
        partitions: usize,
        keys: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Self {
        if keys.is_empty() {
            return Self::new(stage_id, schema, partitions, ReadMode::Hash);
        }
        Self {
            properties: Self::properties_for(&schema, Partitioning::Hash(keys.clone(), partitions)),
            stage_id,
            schema,
            partitions,
            mode: ReadMode::Hash,
            hash_keys: keys,
            constants: Vec::new(),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    fn properties_for(schema: &SchemaRef, partitioning: Partitioning) -> Arc<PlanProperties> {
        Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        ))
    }

    /// This reader with `constants`: expressions that have one value in every row of the
    /// producer's output, whichever partition (a filter `a = 1` upstream), which a
    /// shuffle keeps. Operators that rely on them (a window partitioned by a constant
    /// needs no sort) stay valid after cutting and decoding.
    pub fn with_constants(mut self, constants: Vec<(Arc<dyn PhysicalExpr>, ScalarValue)>) -> Self {
        let mut properties = self.properties.as_ref().clone();
        let mut equivalences = properties.equivalence_properties().clone();
        let known = constants.iter().map(|(expr, value)| {
            ConstExpr::new(expr.clone(), AcrossPartitions::Uniform(Some(value.clone())))
        });
        // Constants over this reader's own schema cannot conflict with anything.
        if equivalences.add_constants(known).is_ok() {
            properties = properties.with_eq_properties(equivalences);
            self.properties = Arc::new(properties);
            self.constants = constants;
        }
        self
    }

    /// The constants this reader knows of (see [`Self::with_constants`]).
    pub fn constants(&self) -> &[(Arc<dyn PhysicalExpr>, ScalarValue)] {
        &self.constants
    }

    /// The expressions the producer hashed rows on (empty: partitioning unknown).
    pub fn hash_keys(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.hash_keys
    }

    /// The stage this reads.
    pub fn stage_id(&self) -> u32 {
        self.stage_id
    }

    /// Partitions this reader exposes.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// How partitions map onto the producer's output.
    pub fn mode(&self) -> ReadMode {
        self.mode
    }

    /// The (map location, shuffle key) pairs that make up reader partition `partition`.
    fn sources(&self, env: &TaskEnv, partition: usize) -> Result<Vec<(MapLocation, ShuffleKey)>> {
        let locations = env.input(self.stage_id)?;
        let key = |map: usize, output: usize| ShuffleKey {
            query_id: env.query_id.clone(),
            stage_id: self.stage_id,
            map_partition: map as u32,
            output_partition: output as u32,
        };
        Ok(match self.mode {
            ReadMode::Hash => locations
                .iter()
                .enumerate()
                .map(|(map, loc)| (loc.clone(), key(map, partition)))
                .collect(),
            ReadMode::PerMap => {
                let loc = locations.get(partition).ok_or_else(|| {
                    DataFusionError::Execution(format!(
                        "stage {} has no map task {partition}",
                        self.stage_id
                    ))
                })?;
                vec![(loc.clone(), key(partition, 0))]
            }
        })
    }
}

impl DisplayAs for ShuffleReaderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShuffleReaderExec: stage={}, partitions={}, mode={:?}",
            self.stage_id, self.partitions, self.mode
        )?;
        if !self.hash_keys.is_empty() {
            let keys: Vec<String> = self.hash_keys.iter().map(|k| k.to_string()).collect();
            write!(f, ", keys=[{}]", keys.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ShuffleReaderExec {
    fn name(&self) -> &str {
        "ShuffleReaderExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return Err(DataFusionError::Internal(
                "ShuffleReaderExec has no children".into(),
            ));
        }
        Ok(self)
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
        let sources = self.sources(&env, partition)?;
        let schema = self.schema.clone();
        let measured = Arc::new(ReadMetrics {
            local: MetricBuilder::new(&self.metrics).counter("local_map_outputs", partition),
            remote: MetricBuilder::new(&self.metrics).counter("fetched_map_outputs", partition),
            answer_wait: MetricBuilder::new(&self.metrics)
                .subset_time("fetch_answer_time", partition),
        });
        let rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let opened = futures::stream::iter(sources).map(move |(location, key)| {
            let env = env.clone();
            let schema = schema.clone();
            let measured = measured.clone();
            async move { open_source(&env, &location, &key, schema, &measured).await }
        });
        let batches = opened
            .buffered(CONCURRENT_FETCHES)
            .try_flatten_unordered(CONCURRENT_FETCHES)
            .inspect_ok(move |batch| rows.add(batch.num_rows()));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            batches,
        )))
    }
}

/// What a reader task measures besides its rows.
struct ReadMetrics {
    /// Map outputs read from this executor's own store.
    local: Count,
    /// Map outputs fetched from other executors.
    remote: Count,
    /// Time from asking a peer for a map output to its answer.
    answer_wait: Time,
}

/// One map output as a stream: from the local store, or fetched over Flight.
async fn open_source(
    env: &TaskEnv,
    location: &MapLocation,
    key: &ShuffleKey,
    schema: SchemaRef,
    measured: &ReadMetrics,
) -> Result<SendableRecordBatchStream> {
    tracing::debug!(%key, local = location.executor_id == env.executor_id, reader = %env.executor_id, "open shuffle source");
    if location.executor_id == env.executor_id {
        // Missing here (a store that restarted under the same executor id, say): the
        // scheduler recomputes it like output on a lost peer.
        let partition = env
            .store
            .get(key)
            .map_err(|e| UnreadableOutput::wrap(&env.executor_id, e.into()))?;
        metrics::counter!("baton_shuffle_bytes_read_total", "source" => "local")
            .increment(partition.bytes());
        measured.local.add(1);
        Ok(partition.stream())
    } else {
        let started = Instant::now();
        let holder = location.executor_id.clone();
        let fetched = env
            .clients
            .fetch(&location.flight_address, key, schema.clone())
            .await
            .map_err(|e| UnreadableOutput::wrap(&holder, e))?
            .map_err(move |e| UnreadableOutput::wrap(&holder, e));
        let answered = started.elapsed();
        measured.remote.add(1);
        measured.answer_wait.add_duration(answered);
        // Logged once the stream ends, to tell a slow peer from a slow reader.
        let key = key.clone();
        let done = futures::stream::once(async move {
            tracing::debug!(%key, answered_micros = answered.as_micros() as u64, total_micros = started.elapsed().as_micros() as u64, "remote shuffle source read");
        })
        .filter_map(|()| async { None });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            fetched.chain(done),
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionConfig;

    use std::time::Duration;

    use super::*;
    use crate::shuffle::fetch::FlightClients;
    use crate::shuffle::store::ShuffleStore;

    /// Reads partition 0 of stage 0, whose one map output `holder` should hold at
    /// `address`, as a task of executor "reader"; returns the error.
    async fn read_error(holder: &str, address: &str) -> DataFusionError {
        read_error_with(holder, address, FlightClients::default()).await
    }

    /// [`read_error`] with these clients.
    async fn read_error_with(
        holder: &str,
        address: &str,
        clients: FlightClients,
    ) -> DataFusionError {
        let dir = tempfile::tempdir().unwrap();
        let env = TaskEnv {
            query_id: "q".into(),
            stage_id: 1,
            map_partition: 0,
            executor_id: "reader".into(),
            inputs: HashMap::from([(
                0,
                vec![MapLocation {
                    executor_id: holder.into(),
                    flight_address: address.into(),
                }],
            )]),
            store: ShuffleStore::new(dir.path(), 1 << 20).unwrap(),
            clients,
        };
        let config = SessionConfig::new().with_extension(Arc::new(env));
        let ctx = Arc::new(TaskContext::default().with_session_config(config));
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let reader = ShuffleReaderExec::new(0, schema, 1, ReadMode::Hash);
        let stream = reader.execute(0, ctx).unwrap();
        match datafusion::physical_plan::common::collect(stream).await {
            Ok(batches) => panic!("read {} batches of output that is not there", batches.len()),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn output_on_a_peer_that_is_gone_names_that_peer() {
        // A port nothing listens on any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let error = read_error("gone", &address).await;
        assert_eq!(UnreadableOutput::executor_of(&error), Some("gone"));
    }

    #[tokio::test]
    async fn output_missing_from_the_own_store_names_the_own_executor() {
        let error = read_error("reader", "127.0.0.1:9").await;
        assert_eq!(UnreadableOutput::executor_of(&error), Some("reader"));
    }

    #[tokio::test]
    async fn a_peer_that_accepts_and_never_answers_fails_the_read_within_the_timeout() {
        // It accepts connections and reads what comes, but never says a word.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let clients = FlightClients::default().with_fetch_timeout(Duration::from_millis(300));
        let error = read_error_with("mute", &address, clients).await;
        assert_eq!(UnreadableOutput::executor_of(&error), Some("mute"));
        assert!(error.to_string().contains("no answer"), "{error}");
        silent.abort();
    }
}
