//! The executor's store of shuffle partitions.
//!
//! Shuffle output stays in memory while the executor's memory pool (shared with its
//! tasks' operators) has room: writing every partition to disk and reading it back costs
//! a distributed engine much of its speed. When the pool is short a partition streams
//! into an Arrow IPC file in the work dir instead.
//! A stored partition releases its memory (or deletes its file) when the last reader of
//! it is done and the store has let it go.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::BatchCoalescer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryPool, MemoryReservation,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use crate::ipc_types::{conform, ipc_schema};

/// Rows per batch that shuffle output is coalesced to before it is stored.
const STORED_BATCH_ROWS: usize = 8192;

/// Errors of the shuffle store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The work directory could not be created or written.
    #[error("shuffle work dir {path}: {source}")]
    WorkDir {
        /// The directory or file involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing or reading Arrow IPC failed.
    #[error("shuffle file {path}: {source}")]
    Ipc {
        /// The file involved.
        path: PathBuf,
        /// The Arrow error.
        source: ArrowError,
    },
    /// Coalescing batches failed (schema mismatch).
    #[error("shuffle batch: {0}")]
    Batch(#[from] ArrowError),
    /// No such partition is stored here.
    #[error("no shuffle partition {0}")]
    NotFound(ShuffleKey),
}

impl From<StoreError> for DataFusionError {
    fn from(e: StoreError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

/// Names one output partition of one map task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShuffleKey {
    /// The query.
    pub query_id: Arc<str>,
    /// The producing stage.
    pub stage_id: u32,
    /// The producing task's partition.
    pub map_partition: u32,
    /// The output partition (0 when the stage does not repartition).
    pub output_partition: u32,
}

impl std::fmt::Display for ShuffleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.query_id, self.stage_id, self.map_partition, self.output_partition
        )
    }
}

/// Memory accounting shared by the store and its partitions: one reservation in the
/// executor's memory pool, which its tasks' operators draw from too, of at most `cap`
/// bytes. Stored partitions cannot give their memory back when an operator needs it, so
/// the cap leaves the rest of the pool to the operators (a merge reading shuffled data
/// needs memory of its own while that data is stored).
#[derive(Debug)]
struct Budget {
    reservation: MemoryReservation,
    cap: usize,
    spilled_files: AtomicU64,
}

impl Budget {
    fn in_pool(pool: &Arc<dyn MemoryPool>, cap: usize) -> Self {
        Self {
            reservation: MemoryConsumer::new("shuffle store")
                .with_can_spill(true)
                .register(pool),
            cap,
            spilled_files: AtomicU64::new(0),
        }
    }

    fn try_reserve(&self, bytes: usize) -> bool {
        self.reservation.size() + bytes <= self.cap && self.reservation.try_grow(bytes).is_ok()
    }

    /// Gives back `bytes` this store reserved (every caller gives back what it took).
    fn release(&self, bytes: usize) {
        let _ = self.reservation.try_shrink(bytes);
    }

    fn used(&self) -> usize {
        self.reservation.size()
    }
}

#[derive(Debug)]
enum Data {
    Memory(Vec<RecordBatch>),
    File(PathBuf),
}

/// One stored output partition.
#[derive(Debug)]
pub struct StoredPartition {
    schema: SchemaRef,
    data: Data,
    reserved: usize,
    rows: u64,
    bytes: u64,
    budget: Arc<Budget>,
}

impl StoredPartition {
    /// Rows in the partition.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// In-memory size of the partition's batches.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The partition's batches as a stream; a file is read on a blocking thread.
    pub fn stream(self: &Arc<Self>) -> SendableRecordBatchStream {
        let schema = self.schema.clone();
        match &self.data {
            Data::Memory(batches) => {
                let batches: Vec<_> = batches.iter().cloned().map(Ok).collect();
                Box::pin(RecordBatchStreamAdapter::new(
                    schema,
                    futures::stream::iter(batches),
                ))
            }
            Data::File(path) => {
                let (tx, rx) = tokio::sync::mpsc::channel(2);
                let path = path.clone();
                let keep_alive = Arc::clone(self);
                let declared = schema.clone();
                tokio::task::spawn_blocking(move || {
                    let _keep_alive = keep_alive;
                    read_ipc_file(&path, &declared, &tx);
                });
                Box::pin(RecordBatchStreamAdapter::new(
                    schema,
                    tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
                ))
            }
        }
    }
}

/// Sends the batches of the IPC file at `path` to `tx`, cast back to the partition's
/// `declared` schema from their written form.
fn read_ipc_file(
    path: &Path,
    declared: &SchemaRef,
    tx: &tokio::sync::mpsc::Sender<datafusion::error::Result<RecordBatch>>,
) {
    let ipc_error = |source| {
        DataFusionError::from(StoreError::Ipc {
            path: path.to_path_buf(),
            source,
        })
    };
    let reader = File::open(path)
        .map_err(|source| {
            DataFusionError::from(StoreError::WorkDir {
                path: path.to_path_buf(),
                source,
            })
        })
        .and_then(|f| StreamReader::try_new(BufReader::new(f), None).map_err(ipc_error));
    match reader {
        Ok(reader) => {
            for batch in reader {
                let batch = batch.and_then(|b| conform(b, declared)).map_err(ipc_error);
                if tx.blocking_send(batch).is_err() {
                    return;
                }
            }
        }
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
        }
    }
}

impl Drop for StoredPartition {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
        if let Data::File(path) = &self.data {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Builds one output partition of a running map task.
///
/// Batches are coalesced to full size, kept in memory while the budget allows and
/// streamed to an IPC file once it does not. Dropped unfinished (a failed or cancelled
/// task), it gives back its memory and removes its file.
pub struct PartitionWriter {
    key: ShuffleKey,
    schema: SchemaRef,
    coalescer: BatchCoalescer,
    batches: Vec<RecordBatch>,
    reserved: usize,
    file: Option<(PathBuf, StreamWriter<BufWriter<File>>)>,
    rows: u64,
    bytes: u64,
    store: Arc<StoreInner>,
}

impl PartitionWriter {
    /// Adds a batch to the partition.
    pub fn push(&mut self, batch: RecordBatch) -> Result<(), StoreError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.coalescer.push_batch(conform(batch, &self.schema)?)?;
        self.drain_completed()
    }

    fn drain_completed(&mut self) -> Result<(), StoreError> {
        while let Some(batch) = self.coalescer.next_completed_batch() {
            self.append(batch)?;
        }
        Ok(())
    }

    fn append(&mut self, batch: RecordBatch) -> Result<(), StoreError> {
        let size = batch.get_array_memory_size();
        self.rows += batch.num_rows() as u64;
        self.bytes += size as u64;
        if self.file.is_none() && self.store.budget.try_reserve(size) {
            self.reserved += size;
            self.batches.push(batch);
            return Ok(());
        }
        self.spill()?;
        let (path, writer) = self.file.as_mut().expect("spill opened the file");
        let ipc = |source| StoreError::Ipc {
            path: path.clone(),
            source,
        };
        let batch = conform(batch, &ipc_schema(&self.schema)).map_err(ipc)?;
        writer.write(&batch).map_err(ipc)
    }

    /// Moves the buffered batches into a new IPC file and frees their memory.
    fn spill(&mut self) -> Result<(), StoreError> {
        if self.file.is_some() {
            return Ok(());
        }
        let path = self.store.file_path(&self.key);
        let file = File::create(&path).map_err(|source| StoreError::WorkDir {
            path: path.clone(),
            source,
        })?;
        let ipc = |source| StoreError::Ipc {
            path: path.clone(),
            source,
        };
        let written = ipc_schema(&self.schema);
        let mut writer = StreamWriter::try_new(BufWriter::new(file), &written).map_err(ipc)?;
        for batch in self.batches.drain(..) {
            writer
                .write(&conform(batch, &written).map_err(ipc)?)
                .map_err(ipc)?;
        }
        self.store
            .budget
            .release(std::mem::take(&mut self.reserved));
        self.store
            .budget
            .spilled_files
            .fetch_add(1, Ordering::Relaxed);
        self.file = Some((path, writer));
        Ok(())
    }

    /// Completes the partition and returns it, ready to commit with [`ShuffleStore::commit`].
    pub fn finish(mut self) -> Result<(ShuffleKey, StoredPartition), StoreError> {
        self.coalescer.finish_buffered_batch()?;
        self.drain_completed()?;
        let data = match self.file.take() {
            Some((path, mut writer)) => {
                writer.finish().map_err(|source| StoreError::Ipc {
                    path: path.clone(),
                    source,
                })?;
                Data::File(path)
            }
            None => Data::Memory(std::mem::take(&mut self.batches)),
        };
        let partition = StoredPartition {
            schema: self.schema.clone(),
            data,
            reserved: std::mem::take(&mut self.reserved),
            rows: self.rows,
            bytes: self.bytes,
            budget: self.store.budget.clone(),
        };
        Ok((self.key.clone(), partition))
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows + self.coalescer.get_buffered_rows() as u64
    }
}

impl Drop for PartitionWriter {
    fn drop(&mut self) {
        self.store.budget.release(self.reserved);
        if let Some((path, _)) = self.file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(Debug)]
struct StoreInner {
    work_dir: PathBuf,
    budget: Arc<Budget>,
    next_file: AtomicU64,
}

impl StoreInner {
    fn file_path(&self, key: &ShuffleKey) -> PathBuf {
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        self.work_dir.join(format!(
            "{}-{}-{}-{}-{n}.arrow",
            key.query_id, key.stage_id, key.map_partition, key.output_partition
        ))
    }
}

/// The executor's shuffle partitions, by key.
#[derive(Debug, Clone)]
pub struct ShuffleStore {
    inner: Arc<StoreInner>,
    partitions: Arc<Mutex<HashMap<ShuffleKey, Arc<StoredPartition>>>>,
}

impl ShuffleStore {
    /// A store that keeps up to `memory_limit` bytes in memory and spills into `work_dir`.
    pub fn new(work_dir: &Path, memory_limit: usize) -> Result<Self, StoreError> {
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(memory_limit));
        Self::in_pool(work_dir, &pool, memory_limit)
    }

    /// A store that keeps up to `cap` bytes of partitions in memory while `pool` has
    /// room, and spills into `work_dir` past that.
    pub fn in_pool(
        work_dir: &Path,
        pool: &Arc<dyn MemoryPool>,
        cap: usize,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(work_dir).map_err(|source| StoreError::WorkDir {
            path: work_dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(StoreInner {
                work_dir: work_dir.to_path_buf(),
                budget: Arc::new(Budget::in_pool(pool, cap)),
                next_file: AtomicU64::new(0),
            }),
            partitions: Arc::default(),
        })
    }

    /// A writer for one output partition; nothing is visible until it is committed.
    pub fn writer(&self, key: ShuffleKey, schema: SchemaRef) -> PartitionWriter {
        PartitionWriter {
            key,
            coalescer: BatchCoalescer::new(schema.clone(), STORED_BATCH_ROWS),
            schema,
            batches: Vec::new(),
            reserved: 0,
            file: None,
            rows: 0,
            bytes: 0,
            store: self.inner.clone(),
        }
    }

    /// Makes finished partitions readable (all of a task's partitions at once).
    pub fn commit(&self, finished: Vec<(ShuffleKey, StoredPartition)>) {
        let mut partitions = self.partitions.lock().expect("store lock");
        for (key, partition) in finished {
            partitions.insert(key, Arc::new(partition));
        }
    }

    /// A stored partition.
    pub fn get(&self, key: &ShuffleKey) -> Result<Arc<StoredPartition>, StoreError> {
        self.partitions
            .lock()
            .expect("store lock")
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(key.clone()))
    }

    /// Takes a partition out of the store as an Arrow IPC stream, when it is held in
    /// memory and encodes to at most `limit` bytes; otherwise leaves it stored and
    /// returns None. Its memory is freed once readers still streaming it finish.
    pub fn take_inline(
        &self,
        key: &ShuffleKey,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Ok(partition) = self.get(key) else {
            return Ok(None);
        };
        let Data::Memory(batches) = &partition.data else {
            return Ok(None);
        };
        // In-memory sizes count buffer capacity, so they over-state the encoding; far
        // over the limit, the partition is not worth encoding to find out.
        if partition.bytes > (limit as u64).saturating_mul(4) {
            return Ok(None);
        }
        let written = ipc_schema(&partition.schema);
        let mut writer = StreamWriter::try_new(Vec::new(), &written)?;
        for batch in batches {
            writer.write(&conform(batch.clone(), &written)?)?;
            if writer.get_ref().len() > limit {
                return Ok(None);
            }
        }
        let encoded = writer.into_inner()?;
        if encoded.len() > limit {
            return Ok(None);
        }
        self.partitions.lock().expect("store lock").remove(key);
        Ok(Some(encoded))
    }

    /// Lets go of a query's partitions: of the given stages, or all when `stages` is empty.
    /// Memory and files are freed once readers still streaming them finish.
    pub fn release(&self, query_id: &str, stages: &[u32]) -> usize {
        let mut partitions = self.partitions.lock().expect("store lock");
        let before = partitions.len();
        partitions.retain(|key, _| {
            !(&*key.query_id == query_id && (stages.is_empty() || stages.contains(&key.stage_id)))
        });
        before - partitions.len()
    }

    /// Lets go of the output of one map task (`map_partition` of stage `stage_id`).
    pub fn release_map_task(&self, query_id: &str, stage_id: u32, map_partition: u32) -> usize {
        let mut partitions = self.partitions.lock().expect("store lock");
        let before = partitions.len();
        partitions.retain(|key, _| {
            !(&*key.query_id == query_id
                && key.stage_id == stage_id
                && key.map_partition == map_partition)
        });
        before - partitions.len()
    }

    /// The map tasks whose output it holds, by query and stage (what an executor
    /// reports when it registers again).
    pub fn held_outputs(&self) -> Vec<crate::proto::HeldOutput> {
        let mut held: std::collections::BTreeMap<(Arc<str>, u32), std::collections::BTreeSet<u32>> =
            std::collections::BTreeMap::new();
        for key in self.partitions.lock().expect("store lock").keys() {
            held.entry((key.query_id.clone(), key.stage_id))
                .or_default()
                .insert(key.map_partition);
        }
        held.into_iter()
            .map(|((query_id, stage_id), maps)| crate::proto::HeldOutput {
                query_id: query_id.to_string(),
                stage_id,
                map_partitions: maps.into_iter().collect(),
            })
            .collect()
    }

    /// Number of stored partitions of one query.
    pub fn partitions_of(&self, query_id: &str) -> usize {
        self.partitions
            .lock()
            .expect("store lock")
            .keys()
            .filter(|key| &*key.query_id == query_id)
            .count()
    }

    /// Number of stored partitions.
    pub fn len(&self) -> usize {
        self.partitions.lock().expect("store lock").len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of shuffle data held in memory now.
    pub fn memory_used(&self) -> usize {
        self.inner.budget.used()
    }

    /// Partitions that went to disk because memory was over budget, since start.
    pub fn spilled_files(&self) -> u64 {
        self.inner.budget.spilled_files.load(Ordering::Relaxed)
    }

    /// Files of this store in its work dir now (spilled partitions).
    pub fn files_on_disk(&self) -> usize {
        std::fs::read_dir(&self.inner.work_dir)
            .map(|dir| dir.filter_map(Result::ok).count())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use futures::TryStreamExt;

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..n))]).unwrap()
    }

    fn key(stage: u32) -> ShuffleKey {
        ShuffleKey {
            query_id: "q".into(),
            stage_id: stage,
            map_partition: 0,
            output_partition: 0,
        }
    }

    async fn roundtrip(store: &ShuffleStore, stage: u32) -> Vec<RecordBatch> {
        let mut w = store.writer(key(stage), batch(1).schema());
        for _ in 0..5 {
            w.push(batch(3000)).unwrap();
        }
        store.commit(vec![w.finish().unwrap()]);
        store
            .get(&key(stage))
            .unwrap()
            .stream()
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn it_reports_the_map_tasks_whose_output_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::new(dir.path(), 1 << 20).unwrap();
        for (stage, map, output) in [(1, 0, 0), (1, 0, 1), (1, 2, 0), (3, 1, 0)] {
            let key = ShuffleKey {
                query_id: "q".into(),
                stage_id: stage,
                map_partition: map,
                output_partition: output,
            };
            let mut w = store.writer(key, batch(1).schema());
            w.push(batch(1)).unwrap();
            store.commit(vec![w.finish().unwrap()]);
        }
        let held: Vec<(u32, Vec<u32>)> = store
            .held_outputs()
            .into_iter()
            .map(|h| (h.stage_id, h.map_partitions))
            .collect();
        assert_eq!(held, vec![(1, vec![0, 2]), (3, vec![1])]);
        store.release("q", &[]);
        assert!(store.held_outputs().is_empty());
    }

    #[tokio::test]
    async fn batches_are_stored_with_the_types_their_plan_declares() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::new(dir.path(), 1 << 30).unwrap();
        let declared = Arc::new(Schema::new(vec![Field::new("v", DataType::Int32, true)]));
        let mut w = store.writer(key(7), declared.clone());
        w.push(batch(3)).unwrap();
        store.commit(vec![w.finish().unwrap()]);
        let stored: Vec<RecordBatch> = store
            .get(&key(7))
            .unwrap()
            .stream()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(stored[0].schema(), declared);
        assert_eq!(stored[0].num_rows(), 3);
    }

    #[tokio::test]
    async fn a_small_partition_is_taken_out_as_ipc_and_a_big_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::new(dir.path(), 1 << 30).unwrap();
        let stored = roundtrip(&store, 1).await;
        // 15,000 Int64 rows encode to about 120 KB: over a 64 KiB limit, under 1 MiB.
        assert!(store.take_inline(&key(1), 64 << 10).unwrap().is_none());
        assert!(store.get(&key(1)).is_ok());
        let encoded = store.take_inline(&key(1), 1 << 20).unwrap().unwrap();
        assert!(encoded.len() <= 1 << 20);
        assert!(store.get(&key(1)).is_err(), "taken out of the store");
        let decoded: Vec<RecordBatch> = StreamReader::try_new(&encoded[..], None)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(decoded, stored);
        assert_eq!(store.memory_used(), 0);
        // Nothing stored under the key: nothing to take.
        assert!(store.take_inline(&key(1), 1 << 20).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_spilled_partition_is_not_taken_inline() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::new(dir.path(), 0).unwrap();
        roundtrip(&store, 1).await;
        assert!(store.take_inline(&key(1), 1 << 20).unwrap().is_none());
        assert!(store.get(&key(1)).is_ok());
    }

    #[tokio::test]
    async fn keeps_small_output_in_memory_and_coalesces() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::new(dir.path(), 1 << 30).unwrap();
        let batches = roundtrip(&store, 1).await;
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 15000);
        assert_eq!(batches[0].num_rows(), STORED_BATCH_ROWS);
        assert_eq!(store.spilled_files(), 0);
        assert!(store.memory_used() > 0);
        assert_eq!(store.release("q", &[]), 1);
        assert_eq!(store.memory_used(), 0);
    }

    #[tokio::test]
    async fn spills_past_the_budget_and_deletes_the_file_on_release() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::new(dir.path(), 1000).unwrap();
        let batches = roundtrip(&store, 2).await;
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 15000);
        assert_eq!(store.spilled_files(), 1);
        assert_eq!(store.files_on_disk(), 1);
        store.release("q", &[2]);
        assert_eq!(store.files_on_disk(), 0);
        assert!(store.get(&key(2)).is_err());
    }

    #[tokio::test]
    async fn an_unfinished_writer_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::new(dir.path(), 1000).unwrap();
        let mut w = store.writer(key(3), batch(1).schema());
        w.push(batch(20000)).unwrap();
        drop(w);
        assert_eq!(store.files_on_disk(), 0);
        assert_eq!(store.memory_used(), 0);
    }
}
