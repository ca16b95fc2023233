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
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::logical_expr::physical_planning_context::ScalarSubqueryResults;
use datafusion::physical_expr::scalar_subquery::ScalarSubqueryExpr;
use datafusion::physical_expr::{AcrossPartitions, Partitioning};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::scalar_subquery::ScalarSubqueryExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, displayable};

use super::PlannerError;
use super::split::split_scans;
use crate::join_filters::{self, KeySummaryExec, rule::FilterLink};
use crate::shuffle::{ReadMode, ShuffleReaderExec, ShuffleWriterExec};

/// One stage: a plan fragment ending in a shuffle writer, run as one task per partition.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// Stage id, unique within the query; the final stage has the largest.
    pub id: u32,
    /// The fragment; its root is a [`ShuffleWriterExec`].
    pub plan: Arc<dyn ExecutionPlan>,
    /// Stages whose output this stage reads.
    pub inputs: Vec<u32>,
    /// Number of tasks (the writer input's partition count).
    pub tasks: usize,
}

/// A query's stages. A stage usually comes after its inputs; one that evaluates a scalar
/// subquery also waits for the subquery's stages, which may have larger ids.
#[derive(Debug, Clone)]
pub struct StageDag {
    /// The stages; `stages[i].id == i`.
    pub stages: Vec<StagePlan>,
    /// The schema of the query result.
    pub schema: SchemaRef,
    /// Where the halves of each join filter are (see [`crate::join_filters`]).
    pub filters: Vec<FilterLink>,
    /// The filters whose build side was made a stage of its own for them.
    pub staged_builds: Vec<u32>,
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

/// Cuts `plan` into a DAG of stages; the file scans that make a stage's tasks are split
/// into units of about `split_unit` bytes, one task each (0: as DataFusion planned them).
/// With `join_filters`, joins get the filters of [`join_filters::rule::insert`], which
/// leaves the build sides of the filter ids it holds in their join's stage.
pub fn plan_stages(
    plan: Arc<dyn ExecutionPlan>,
    split_unit: u64,
    join_filters: Option<&[u32]>,
) -> Result<StageDag, PlannerError> {
    let schema = plan.schema();
    let plan = super::distribute_joins(plan)?;
    let plan = super::wire::unproject_lazy_scans(plan)?;
    let (plan, staged_builds, reverse) = match join_filters {
        Some(keep_in_stage) => {
            let inserted = join_filters::rule::insert(plan, keep_in_stage)?;
            (inserted.plan, inserted.staged, inserted.reverse)
        }
        None => (plan, Vec::new(), Vec::new()),
    };
    let mut stages = Vec::new();
    let rewritten = plan
        .transform_up(|node| cut(node, &mut stages, split_unit))?
        .data;
    add_stage(&mut stages, split_scans(rewritten, split_unit)?, None)?;
    let plans: Vec<_> = stages.iter().map(|s| s.plan.clone()).collect();
    let filters = join_filters::rule::links(&plans, &reverse)?;
    Ok(StageDag {
        stages,
        schema,
        filters,
        staged_builds,
    })
}

/// Rewrites one node when it is an exchange boundary.
/// The stage it closes gets its scans split into units of `split_unit` bytes.
fn cut(
    node: Arc<dyn ExecutionPlan>,
    stages: &mut Vec<StagePlan>,
    split_unit: u64,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    if let Some(repartition) = node.downcast_ref::<RepartitionExec>() {
        let input = repartition.input().clone();
        return match repartition.partitioning() {
            Partitioning::Hash(exprs, n) => {
                let input = split_scans(input, split_unit)?;
                let ordering = repartition
                    .preserve_order()
                    .then(|| input.output_ordering().cloned())
                    .flatten();
                let id = add_stage(
                    stages,
                    input.clone(),
                    Some(Partitioning::Hash(exprs.clone(), *n)),
                )?;
                let reader: Arc<dyn ExecutionPlan> = Arc::new(
                    ShuffleReaderExec::hashed(id, input.schema(), *n, exprs.clone())
                        .with_constants(uniform_constants(&input)),
                );
                // A reader interleaves map outputs; restore an order the plan relies on.
                let reader = match ordering {
                    Some(ordering) => {
                        Arc::new(SortExec::new(ordering, reader).with_preserve_partitioning(true))
                    }
                    None => reader,
                };
                Ok(Transformed::yes(reader))
            }
            _ => Ok(Transformed::yes(input)),
        };
    }
    if let Some(exec) = node.downcast_ref::<ScalarSubqueryExec>() {
        attach_subqueries(stages, exec)?;
        return Ok(Transformed::no(node));
    }
    if node.is::<CoalescePartitionsExec>() || node.is::<SortPreservingMergeExec>() {
        let child = split_scans(node.children()[0].clone(), split_unit)?;
        let maps = child.output_partitioning().partition_count();
        if gathers_a_stage(&node, maps) {
            let id = add_stage(stages, child.clone(), None)?;
            let reader = Arc::new(
                ShuffleReaderExec::new(id, child.schema(), maps, ReadMode::PerMap)
                    .with_constants(uniform_constants(&child)),
            );
            return Ok(Transformed::yes(replace_children_if_necessary(
                node,
                vec![reader],
            )?));
        }
    }
    Ok(Transformed::no(node))
}

/// True when `node` gathers an input of `partitions` partitions that the cut makes a
/// stage of its own: a `CoalescePartitionsExec` or `SortPreservingMergeExec` over
/// several partitions, or over a join filter's build side (`join_filters::rule`), which
/// is a stage even at one partition so that the scans it filters run first.
pub fn gathers_a_stage(node: &Arc<dyn ExecutionPlan>, partitions: usize) -> bool {
    (node.is::<CoalescePartitionsExec>() || node.is::<SortPreservingMergeExec>())
        && (partitions > 1 || node.children()[0].is::<KeySummaryExec>())
}

/// The expressions `plan`'s output holds at one known value in every partition.
fn uniform_constants(
    plan: &Arc<dyn ExecutionPlan>,
) -> Vec<(
    Arc<dyn datafusion::physical_expr::PhysicalExpr>,
    ScalarValue,
)> {
    plan.equivalence_properties()
        .constants()
        .into_iter()
        .filter_map(|c| match c.across_partitions {
            AcrossPartitions::Uniform(Some(value)) => Some((c.expr, value)),
            _ => None,
        })
        .collect()
}

/// Gives every stage that evaluates one of `exec`'s scalar subquery expressions its own
/// copy of `exec` around its plan, so the subqueries are computed where the expressions
/// run (a `ScalarSubqueryExpr` cannot be decoded without its `ScalarSubqueryExec`). The
/// stage then also waits for the stages the subqueries read.
fn attach_subqueries(stages: &mut [StagePlan], exec: &ScalarSubqueryExec) -> Result<()> {
    let mut subquery_inputs = Vec::new();
    for link in exec.subqueries() {
        collect_inputs(&link.plan, &mut subquery_inputs)?;
    }
    for stage in stages.iter_mut() {
        let Some(writer) = stage.plan.downcast_ref::<ShuffleWriterExec>() else {
            continue;
        };
        if !uses_results(writer.input(), exec.results())? {
            continue;
        }
        let wrapped = Arc::new(ScalarSubqueryExec::new(
            writer.input().clone(),
            exec.subqueries().to_vec(),
            exec.results().clone(),
        ));
        stage.plan = Arc::new(ShuffleWriterExec::try_new(
            wrapped,
            writer.partitioning().cloned(),
        )?);
        for id in &subquery_inputs {
            if !stage.inputs.contains(id) {
                stage.inputs.push(*id);
            }
        }
    }
    Ok(())
}

/// True when an expression somewhere in `plan` reads the subquery results `results`.
fn uses_results(plan: &Arc<dyn ExecutionPlan>, results: &ScalarSubqueryResults) -> Result<bool> {
    let mut found = false;
    plan.apply(|node| {
        node.apply_expressions(&mut |root| {
            root.apply(|expr| {
                if let Some(subquery) = expr.downcast_ref::<ScalarSubqueryExpr>()
                    && ScalarSubqueryResults::ptr_eq(subquery.results(), results)
                {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(found)
}

/// Adds the ids of the stages `plan` reads to `inputs`.
fn collect_inputs(plan: &Arc<dyn ExecutionPlan>, inputs: &mut Vec<u32>) -> Result<()> {
    plan.apply(|n| {
        if let Some(reader) = n.downcast_ref::<ShuffleReaderExec>()
            && !inputs.contains(&reader.stage_id())
        {
            inputs.push(reader.stage_id());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

/// Closes a stage over `input` and returns its id.
fn add_stage(
    stages: &mut Vec<StagePlan>,
    input: Arc<dyn ExecutionPlan>,
    partitioning: Option<Partitioning>,
) -> Result<u32> {
    let id = stages.len() as u32;
    let mut inputs = Vec::new();
    collect_inputs(&input, &mut inputs)?;
    let tasks = input.output_partitioning().partition_count();
    stages.push(StagePlan {
        id,
        plan: Arc::new(ShuffleWriterExec::try_new(input, partitioning)?),
        inputs,
        tasks,
    });
    Ok(id)
}

/// A stage plan's operators, top down, for status and benchmarks: a chain reads
/// "A > B", an operator of several inputs "A(B, C)"; the "Exec" in the names is left out.
pub fn operator_summary(plan: &Arc<dyn ExecutionPlan>) -> String {
    let name = plan.name().replace("Exec", "");
    match plan.children().as_slice() {
        [] => name.to_string(),
        [only] => format!("{name} > {}", operator_summary(only)),
        many => {
            let inputs: Vec<String> = many.iter().map(|c| operator_summary(c)).collect();
            format!("{name}({})", inputs.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::distributed_session_config;
    use crate::planner::{decode_plan, encode_plan};
    use crate::tpch;
    use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
    use datafusion::prelude::SessionContext;

    async fn tpch_dag(number: u32) -> StageDag {
        crate::planner::tpch_stages_of(tpch::query(number).unwrap().sql).await
    }

    /// (tasks, inputs) of every stage.
    fn shape(dag: &StageDag) -> Vec<(usize, Vec<u32>)> {
        dag.stages
            .iter()
            .map(|s| (s.tasks, s.inputs.clone()))
            .collect()
    }

    fn readers(plan: &Arc<dyn ExecutionPlan>) -> Vec<(u32, ReadMode, usize)> {
        let mut found = Vec::new();
        plan.apply(|n| {
            if let Some(r) = n.downcast_ref::<ShuffleReaderExec>() {
                found.push((r.stage_id(), r.mode(), r.partitions()));
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        found
    }

    #[tokio::test]
    async fn a_stage_summary_names_its_operators_top_down() {
        let dag = tpch_dag(3).await;
        let summaries: Vec<String> = dag
            .stages
            .iter()
            .map(|s| operator_summary(&s.plan))
            .collect();
        assert!(
            summaries[0].starts_with("ShuffleWriter > "),
            "{summaries:?}"
        );
        assert!(
            summaries
                .iter()
                .any(|s| s.contains("HashJoin(") && s.contains("ShuffleReader")),
            "{summaries:?}"
        );
        assert!(
            !summaries.iter().any(|s| s.contains("Exec")),
            "{summaries:?}"
        );
    }

    #[tokio::test]
    async fn q1_is_scan_shuffle_aggregate_then_merge() {
        let dag = tpch_dag(1).await;
        assert_eq!(
            shape(&dag),
            vec![(4, vec![]), (4, vec![0]), (1, vec![1])],
            "{}",
            dag.display()
        );
        assert_eq!(readers(&dag.stages[1].plan), vec![(0, ReadMode::Hash, 4)]);
        assert_eq!(readers(&dag.stages[2].plan), vec![(1, ReadMode::PerMap, 4)]);
        let writer = dag.stages[0]
            .plan
            .downcast_ref::<ShuffleWriterExec>()
            .unwrap();
        assert_eq!(writer.output_partitions(), 4);
        assert!(
            dag.final_stage()
                .plan
                .downcast_ref::<ShuffleWriterExec>()
                .unwrap()
                .partitioning()
                .is_none()
        );
    }

    #[tokio::test]
    async fn every_stage_reads_exactly_its_inputs_and_inputs_finish_first() {
        for query in tpch::QUERIES {
            let dag = tpch_dag(query.number).await;
            assert_eq!(
                dag.final_stage().tasks,
                1,
                "Q{} ends in one task",
                query.number
            );
            for stage in &dag.stages {
                let mut read: Vec<u32> = readers(&stage.plan).iter().map(|r| r.0).collect();
                read.sort();
                read.dedup();
                let mut inputs = stage.inputs.clone();
                inputs.sort();
                assert_eq!(read, inputs, "Q{} stage {}", query.number, stage.id);
                assert!(
                    stage
                        .inputs
                        .iter()
                        .all(|&i| i != stage.id && (i as usize) < dag.stages.len())
                );
            }
        }
    }

    #[tokio::test]
    async fn join_stages_wait_for_both_shuffled_sides() {
        let mut joins = 0;
        for query in tpch::QUERIES {
            let dag = tpch_dag(query.number).await;
            joins += dag.stages.iter().filter(|s| s.inputs.len() >= 2).count();
            for stage in &dag.stages {
                for input in &stage.inputs {
                    assert!(dag.consumers(*input).contains(&stage.id));
                }
            }
        }
        assert!(joins > 0, "some TPC-H stage joins two shuffled inputs");
    }

    #[tokio::test]
    async fn left_emitting_collect_left_joins_become_partitioned() {
        for number in [4, 13, 21, 22] {
            let dag = tpch_dag(number).await;
            for stage in &dag.stages {
                stage
                    .plan
                    .apply(|n| {
                        if let Some(join) = n.downcast_ref::<HashJoinExec>() {
                            assert!(
                                *join.partition_mode() != PartitionMode::CollectLeft
                                    || !matches!(
                                        join.join_type(),
                                        datafusion::common::JoinType::LeftSemi
                                            | datafusion::common::JoinType::LeftAnti
                                            | datafusion::common::JoinType::Left
                                            | datafusion::common::JoinType::Full
                                    )
                                    || join.null_aware,
                                "Q{number}: {}",
                                dag.display()
                            );
                        }
                        Ok(TreeNodeRecursion::Continue)
                    })
                    .unwrap();
            }
        }
    }

    /// A union of aggregations on the same key: DataFusion interleaves their
    /// hash-partitioned outputs, which needs the cut plan's readers to say how they are
    /// partitioned, also once decoded. (tests/sql.rs runs it, and unions of joins.)
    #[tokio::test]
    async fn unions_of_inputs_partitioned_alike_stay_interleaved_after_cutting() {
        let ctx = SessionContext::new_with_config(distributed_session_config(4));
        let by_key = "select k, sum(v) from (\
             select l_orderkey as k, sum(l_quantity) as v from lineitem group by l_orderkey \
             union all select o_orderkey, count(*) from orders group by o_orderkey \
             union all select l_orderkey, max(l_extendedprice) from lineitem group by l_orderkey\
             ) group by k";
        {
            let sql = by_key;
            let dag = crate::planner::tpch_stages_of(sql).await;
            let mut interleaved = 0;
            for stage in &dag.stages {
                stage
                    .plan
                    .apply(|n| {
                        interleaved += usize::from(n.name() == "InterleaveExec");
                        Ok(TreeNodeRecursion::Continue)
                    })
                    .unwrap();
                // Decoding re-checks the interleave (datafusion-proto may fold a
                // projection that only repeats a cast, so the text can differ there).
                let bytes = encode_plan(stage.plan.clone()).unwrap();
                let decoded = decode_plan(&bytes, &ctx.task_ctx()).unwrap();
                let shown = |plan: &Arc<dyn ExecutionPlan>| {
                    let text = displayable(plan.as_ref()).indent(true).to_string();
                    (
                        text.matches("InterleaveExec").count(),
                        text.matches("keys=[").count(),
                    )
                };
                assert_eq!(shown(&decoded), shown(&stage.plan), "{sql}");
            }
            assert!(interleaved > 0, "{sql}:\n{}", dag.display());
        }
    }

    #[tokio::test]
    async fn stage_plans_round_trip_through_bytes() {
        // Decoding also proves that every scalar subquery expression travels with its
        // ScalarSubqueryExec (Q2, Q11, Q15, Q17, Q20, Q22 have subqueries).
        let ctx = SessionContext::new_with_config(distributed_session_config(4));
        for number in 1..=22 {
            let dag = tpch_dag(number).await;
            for stage in &dag.stages {
                let bytes = encode_plan(stage.plan.clone()).unwrap();
                let decoded = decode_plan(&bytes, &ctx.task_ctx()).unwrap();
                assert_eq!(
                    displayable(decoded.as_ref()).indent(true).to_string(),
                    displayable(stage.plan.as_ref()).indent(true).to_string(),
                    "Q{number} stage {}",
                    stage.id
                );
            }
        }
    }
}
