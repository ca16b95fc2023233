//! Cutting a physical plan into stages.
//!
//! Before:
//! ```text
//! SortPreservingMergeExec [revenue DESC]
//!   SortExec [revenue DESC]
//!     AggregateExec mode=FinalPartitioned gby=[n_name]
//!       RepartitionExec Hash([n_name], 4)
//!         AggregateExec mode=Partial gby=[n_name]
//!           DataSourceExec (4 file ranges)
//! ```
//! After (three stages; each ends in a shuffle writer, each input is a shuffle reader):
//! ```text
//! stage 0 (4 tasks): ShuffleWriterExec Hash([n_name], 4)
//!                      AggregateExec Partial / DataSourceExec
//! stage 1 (4 tasks): ShuffleWriterExec none
//!                      SortExec / AggregateExec FinalPartitioned
//!                        ShuffleReaderExec stage=0 mode=Hash
//! stage 2 (1 task):  ShuffleWriterExec none
//!                      SortPreservingMergeExec
//!                        ShuffleReaderExec stage=1 mode=PerMap
//! ```
//! Hash `RepartitionExec` ends the producer stage with a hash-partitioned writer.
//! `CoalescePartitionsExec` and `SortPreservingMergeExec` stay in the consumer stage,
//! over a reader whose partition `m` is map task `m`'s output. A non-hash
//! `RepartitionExec` is removed: scans are already split into file ranges, and inside a
//! stage one task would otherwise pull every input partition. The last stage's tasks
//! hold the query result, one partition each.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::physical_expr::Partitioning;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, displayable};

use super::PlannerError;
use crate::shuffle::{ReadMode, ShuffleReaderExec, ShuffleWriterExec};

/// One stage: a plan fragment ending in a shuffle writer, run as one task per partition.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// Stage id, unique within the query; inputs always have smaller ids.
    pub id: u32,
    /// The fragment; its root is a [`ShuffleWriterExec`].
    pub plan: Arc<dyn ExecutionPlan>,
    /// Stages whose output this stage reads.
    pub inputs: Vec<u32>,
    /// Number of tasks (the writer input's partition count).
    pub tasks: usize,
}

/// A query's stages, in an order where every stage comes after its inputs.
#[derive(Debug, Clone)]
pub struct StageDag {
    /// The stages; `stages[i].id == i`.
    pub stages: Vec<StagePlan>,
    /// The schema of the query result.
    pub schema: SchemaRef,
}

impl StageDag {
    /// The stage whose tasks hold the query result.
    pub fn final_stage(&self) -> &StagePlan {
        self.stages.last().expect("a DAG has at least one stage")
    }

    /// The stages that read stage `id`.
    pub fn consumers(&self, id: u32) -> Vec<u32> {
        self.stages
            .iter()
            .filter(|s| s.inputs.contains(&id))
            .map(|s| s.id)
            .collect()
    }

    /// Every stage's plan, indented, for EXPLAIN-like output and tests.
    pub fn display(&self) -> String {
        self.stages
            .iter()
            .map(|s| {
                format!(
                    "stage {} ({} tasks, inputs {:?}):\n{}",
                    s.id,
                    s.tasks,
                    s.inputs,
                    displayable(s.plan.as_ref()).indent(false)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Cuts `plan` into a DAG of stages.
pub fn plan_stages(plan: Arc<dyn ExecutionPlan>) -> Result<StageDag, PlannerError> {
    let schema = plan.schema();
    let mut stages = Vec::new();
    let rewritten = plan
        .transform_up(|node| cut(node, &mut stages))?
        .data;
    add_stage(&mut stages, rewritten, None)?;
    Ok(StageDag { stages, schema })
}

/// Rewrites one node when it is an exchange boundary.
fn cut(
    node: Arc<dyn ExecutionPlan>,
    stages: &mut Vec<StagePlan>,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    if let Some(repartition) = node.downcast_ref::<RepartitionExec>() {
        let input = repartition.input().clone();
        return match repartition.partitioning() {
            Partitioning::Hash(exprs, n) => {
                let ordering = repartition
                    .preserve_order()
                    .then(|| input.output_ordering().cloned())
                    .flatten();
                let id = add_stage(stages, input.clone(), Some(Partitioning::Hash(exprs.clone(), *n)))?;
                let reader: Arc<dyn ExecutionPlan> =
                    Arc::new(ShuffleReaderExec::new(id, input.schema(), *n, ReadMode::Hash));
                // A reader interleaves map outputs; restore an order the plan relies on.
                let reader = match ordering {
                    Some(ordering) => Arc::new(
                        SortExec::new(ordering, reader).with_preserve_partitioning(true),
                    ),
                    None => reader,
                };
                Ok(Transformed::yes(reader))
            }
            _ => Ok(Transformed::yes(input)),
        };
    }
    let gathers = node.is::<CoalescePartitionsExec>() || node.is::<SortPreservingMergeExec>();
    if gathers {
        let child = node.children()[0].clone();
        let maps = child.output_partitioning().partition_count();
        if maps > 1 {
            let id = add_stage(stages, child.clone(), None)?;
            let reader = Arc::new(ShuffleReaderExec::new(id, child.schema(), maps, ReadMode::PerMap));
            return Ok(Transformed::yes(replace_children_if_necessary(node, vec![reader])?));
        }
    }
    Ok(Transformed::no(node))
}

/// Closes a stage over `input` and returns its id.
fn add_stage(
    stages: &mut Vec<StagePlan>,
    input: Arc<dyn ExecutionPlan>,
    partitioning: Option<Partitioning>,
) -> Result<u32> {
    let id = stages.len() as u32;
    let mut inputs = Vec::new();
    input.apply(|n| {
        if let Some(reader) = n.downcast_ref::<ShuffleReaderExec>()
            && !inputs.contains(&reader.stage_id())
        {
            inputs.push(reader.stage_id());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let tasks = input.output_partitioning().partition_count();
    stages.push(StagePlan {
        id,
        plan: Arc::new(ShuffleWriterExec::try_new(input, partitioning)?),
        inputs,
        tasks,
    });
    Ok(id)
}
