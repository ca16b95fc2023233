//! Statements the scheduler answers itself instead of sending to executors.
//!
//! Some plans can only run where the session lives: `SHOW` and `information_schema`
//! read the scheduler's catalog and the session's settings (`StreamingTableExec`), and
//! an `INSERT` into a session's in-memory table writes to that table, which exists on
//! the scheduler alone. A plan with an operator that has no wire form (a recursive CTE's
//! `RecursiveQueryExec`, say) cannot reach an executor either. Such a plan runs here, on
//! a planning thread, and its result is held like a small result an executor sent back;
//! a result over [`LOCAL_RESULT_BYTES`] fails the query rather than grow the scheduler.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_plan::WindowExpr;
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion_datasource::memory::MemSink;
use futures::TryStreamExt;

use crate::ipc_types::{conform, ipc_schema};

/// The largest result (Arrow IPC bytes) a plan run on the scheduler may have.
pub const LOCAL_RESULT_BYTES: usize = 64 << 20;

/// Why a plan runs on the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// It reads the catalog or the session's settings (`SHOW`, `information_schema`).
    Metadata,
    /// It writes a session's in-memory table.
    SessionTable,
    /// One of its operators cannot be serialized for an executor.
    NoWireForm,
}

impl Reason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Metadata => "metadata",
            Reason::SessionTable => "session_table",
            Reason::NoWireForm => "no_wire_form",
        }
    }
}

/// Why `plan` must run on the scheduler, if it must: it reads scheduler-side metadata or
/// writes a session table.
pub fn must_run_here(plan: &Arc<dyn ExecutionPlan>) -> Option<Reason> {
    let mut reason = None;
    let _ = plan.apply(|node| {
        if node.downcast_ref::<StreamingTableExec>().is_some() {
            reason = Some(Reason::Metadata);
        } else if let Some(sink) = node.downcast_ref::<DataSinkExec>()
            && (sink.sink() as &dyn std::any::Any).is::<MemSink>()
        {
            reason = Some(Reason::SessionTable);
        } else if window_exprs(node.as_ref()).is_some_and(|exprs| {
            exprs.iter().any(|e| {
                let name = e.name();
                name.contains(" IGNORE NULLS") || name.contains("FILTER (WHERE")
            })
        }) {
            // datafusion-proto drops a window function's IGNORE NULLS and FILTER: an
            // executor would compute another answer.
            reason = Some(Reason::NoWireForm);
        } else if has_float16_literal(node.as_ref()) {
            // datafusion-proto sends a Float16 literal as a Float32 one: an executor
            // would compute with another type (and panic on it).
            reason = Some(Reason::NoWireForm);
        }
        Ok(if reason.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    reason
}

/// The window expressions of a window operator.
fn window_exprs(node: &dyn ExecutionPlan) -> Option<&[Arc<dyn WindowExpr>]> {
    if let Some(window) = node.downcast_ref::<BoundedWindowAggExec>() {
        Some(window.window_expr())
    } else {
        node.downcast_ref::<WindowAggExec>()
            .map(|window| window.window_expr())
    }
}

/// True when one of `node`'s expressions holds a Float16 literal of some value.
fn has_float16_literal(node: &dyn ExecutionPlan) -> bool {
    let mut found = false;
    let _ = node.apply_expressions(&mut |root| {
        root.apply(|expr| {
            if let Some(literal) = expr.downcast_ref::<Literal>()
                && matches!(literal.value(), ScalarValue::Float16(Some(_)))
            {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
    });
    found
}

/// Runs `plan` in `ctx` and returns its result as Arrow IPC (a stream of all its
/// partitions' batches).
pub async fn run(
    plan: Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
    reason: Reason,
) -> Result<Bytes> {
    metrics::counter!("baton_queries_run_on_scheduler_total", "reason" => reason.label())
        .increment(1);
    let schema = ipc_schema(&plan.schema());
    let mut batches = execute_stream(plan, ctx)?;
    let mut writer = StreamWriter::try_new(Vec::new(), &schema)?;
    while let Some(batch) = batches.try_next().await? {
        writer.write(&conform(batch, &schema)?)?;
        if writer.get_ref().len() > LOCAL_RESULT_BYTES {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the result of a statement the scheduler runs itself ({}) is over {} MiB",
                reason.label(),
                LOCAL_RESULT_BYTES >> 20
            )));
        }
    }
    writer.finish()?;
    Ok(Bytes::from(writer.into_inner()?))
}
